"""Per-field lossless compression, chosen by measurement on the data being converted.

The release's dtypes are undocumented and its fields differ wildly (noisy float images, binary
masks, small landmark tables), so no single codec is right for all of them. Before converting,
:func:`choose_encodings` compresses a few real samples with a small set of Blosc candidates and
keeps, per field, the cheapest in CPU time (encode once, decode every epoch) among those whose
output is as small as the smallest, give or take a little. The chosen
:class:`Encoding` drives both writers: the Zarr arrays' Blosc codec and the tar members, so the
two formats stay comparable and their read paths share one decoder.

Blosc is used because it shuffles bytes (or bits) of each element before compressing — what
makes float images and 0/1 masks compress far better than plain deflate — and decodes in
well under a millisecond per megabyte. Its block size matters as much as the codec: zstd pays
a fixed price per block, and Blosc's own choice (128-256 KiB here) made blocks small enough
that a 2 MB label decoded slower than a 1 MB image. Candidates therefore come in two block
sizes; on this data 1 MiB blocks are up to 10 % smaller, encode in half the time and decode
faster, except bit-shuffled images, which decode faster in 256 KiB blocks (they stay in cache).

That rule puts size first. With ``prefer="speed"`` (``ssmspine convert --prefer speed``) LZ4
candidates join and the cheapest in CPU time wins whatever its size, as long as it compresses at
all: on this data the float images then decode 2-3 times faster in about twice the bytes, for
machines whose disks are large and whose cores per GPU are few.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import asdict, dataclass
from typing import Iterator, Mapping, Sequence

import numcodecs.blosc
import numpy as np
from numcodecs import Blosc

from pipeline.errors import OutputError, UsageError

log = logging.getLogger(__name__)

SHUFFLE_NAMES = {Blosc.NOSHUFFLE: "noshuffle", Blosc.SHUFFLE: "shuffle", Blosc.BITSHUFFLE: "bitshuffle"}

#: Candidates whose output is within this fraction of the smallest (or within
#: :data:`SIZE_SLACK_BYTES`, which matters for fields that compress to almost nothing) count as
#: equally small; among those the cheapest in CPU time wins, so a 1 % gain never costs twice the
#: time. 3 %: bit-shuffled images in 256 KiB blocks are ~2.5 % larger than in 1 MiB blocks and
#: decode 10-30 % faster.
SIZE_TOLERANCE = 0.03
SIZE_SLACK_BYTES = 8192
#: A sample is encoded once but decoded in every epoch of every training run that reads it:
#: decode time weighs this much more.
DECODES_PER_ENCODE = 50
#: Timings are the best of this many runs: the machine may be busy with other work.
TIMING_RUNS = 2


@dataclass(frozen=True)
class Encoding:
    """A Blosc configuration for one field (``blocksize`` 0: Blosc sizes its blocks itself)."""

    cname: str = "zstd"
    clevel: int = 3
    shuffle: int = Blosc.SHUFFLE
    blocksize: int = 0

    def codec(self, itemsize: int) -> Blosc:
        # typesize drives the shuffle; a frame records its settings, so any Blosc reader decodes it
        return Blosc(
            cname=self.cname, clevel=self.clevel, shuffle=self.shuffle, blocksize=self.blocksize, typesize=itemsize
        )

    def encode(self, data: np.ndarray | bytes | memoryview, itemsize: int) -> bytes:
        """Compress ``data`` (any contiguous buffer) with elements of ``itemsize`` bytes."""
        return self.codec(itemsize).encode(as_elements(data, itemsize))

    def describe(self) -> str:
        blocks = f"-{self.blocksize >> 10}KiB" if self.blocksize else ""
        return f"blosc-{self.cname}-{self.clevel}-{SHUFFLE_NAMES[self.shuffle]}{blocks}"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping) -> "Encoding":
        return cls(
            cname=str(data["cname"]),
            clevel=int(data["clevel"]),
            shuffle=int(data["shuffle"]),
            blocksize=int(data.get("blocksize", 0)),
        )


#: Block sizes tried (see the module's docstring).
BLOCK_SIZES = (256 << 10, 1 << 20)


def _every_setting(cname: str, levels: Sequence[int]) -> tuple[Encoding, ...]:
    """``cname`` at each of ``levels``, with each shuffle, in each of :data:`BLOCK_SIZES`."""
    shuffles = (Blosc.NOSHUFFLE, Blosc.SHUFFLE, Blosc.BITSHUFFLE)
    return tuple(
        Encoding(cname, level, shuffle, size) for level in levels for shuffle in shuffles for size in BLOCK_SIZES
    )


#: Encodings tried per field. zstd beats lz4 and blosclz on size for every field of this data;
#: levels above 5 cost several times the encode time for about 2 %.
CANDIDATES = _every_setting("zstd", (1, 3, 5))
#: Tried as well when speed comes first: LZ4 decodes noisy float images 2-3 times faster than zstd,
#: into about twice the bytes. (LZ4-HC compresses better but encodes too slowly to calibrate.)
FAST_CANDIDATES = _every_setting("lz4", (1, 5, 9))

#: What the choice of encodings puts first: ``"size"`` (the default: the smallest, then the
#: cheapest among those about as small) or ``"speed"`` (the cheapest that compresses at all).
PREFERENCES = ("size", "speed")


def as_elements(data: np.ndarray | bytes | memoryview, itemsize: int) -> np.ndarray:
    """View a buffer as unsigned integers of ``itemsize`` bytes, so Blosc shuffles per element."""
    flat = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    return flat.view(np.dtype(f"u{itemsize}")) if flat.size % itemsize == 0 else flat


def decode(payload: bytes | memoryview, out: bytearray | memoryview | None = None) -> memoryview:
    """Decompress a Blosc frame (it records its own codec settings) into ``out`` or a new buffer."""
    return memoryview(Blosc().decode(payload, out=out))


#: A Blosc frame starts with 16 bytes: ..., nbytes at [4:8], ..., cbytes at [12:16].
BLOSC_HEADER = 16


def decode_into(frame: bytes | memoryview, out: np.ndarray, name: str) -> np.ndarray:
    """Decompress one stored Blosc frame into the contiguous array ``out``, checking it first.

    The frame's header must promise exactly ``out``'s bytes and be exactly as long as what was
    read, so a truncated or foreign frame is an :class:`OutputError` naming ``name``, never a
    crash or a silently short array.
    """
    view = memoryview(frame)
    if len(view) < BLOSC_HEADER:
        raise OutputError(f"{name}: damaged Blosc data (frame of {len(view)} bytes)")
    nbytes = int.from_bytes(view[4:8], "little")
    cbytes = int.from_bytes(view[12:16], "little")
    if nbytes != out.nbytes or cbytes != len(view):
        raise OutputError(
            f"{name}: damaged Blosc data (frame says {nbytes} bytes in {cbytes}, expected {out.nbytes} in {len(view)})"
        )
    try:
        if out.nbytes:
            decode(view, out=memoryview(out.reshape(-1, order="A")).cast("B"))
    except Exception as exc:  # numcodecs raises RuntimeError/ValueError on a damaged frame
        raise OutputError(f"{name}: damaged Blosc data ({exc})") from exc
    return out


@dataclass(frozen=True)
class Measurement:
    """What one candidate did on the calibration samples of one field."""

    encoding: Encoding
    nbytes: int
    encode_seconds: float
    decode_seconds: float
    #: how many arrays (samples) the figures are totals of
    arrays: int = 1

    @property
    def cost(self) -> float:
        """CPU seconds over a dataset's life: one encode, :data:`DECODES_PER_ENCODE` decodes."""
        return self.encode_seconds + DECODES_PER_ENCODE * self.decode_seconds


def _best_time(function) -> float:
    times = []
    for _ in range(TIMING_RUNS):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


@contextlib.contextmanager
def one_blosc_thread() -> Iterator[None]:
    """Blosc without its internal threads in this block, as conversion tasks (Dask worker
    threads) and the readers' decode threads run it.

    numcodecs uses Blosc's global thread pool only for calls from a main thread (by default);
    there it would split a frame's blocks over its own threads. Other threads always decode on
    their own, so outside the main thread this changes nothing (and never touches the
    process-wide flag, which only the main thread sets and restores).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = numcodecs.blosc.use_threads
    numcodecs.blosc.use_threads = False
    try:
        yield
    finally:
        numcodecs.blosc.use_threads = saved


def measure(arrays: Sequence[np.ndarray], encoding: Encoding) -> Measurement:
    """Total compressed size, encode and decode time of ``arrays`` under ``encoding``."""
    with one_blosc_thread():
        frames = [encoding.encode(a, a.dtype.itemsize) for a in arrays]
        outputs = [np.empty(a.nbytes, np.uint8) for a in arrays]
        return Measurement(
            encoding,
            nbytes=sum(map(len, frames)),
            encode_seconds=_best_time(lambda: [encoding.encode(a, a.dtype.itemsize) for a in arrays]),
            decode_seconds=_best_time(lambda: [decode(f, out=o) for f, o in zip(frames, outputs)]),
            arrays=len(arrays),
        )


def choose(
    arrays: Sequence[np.ndarray], candidates: Sequence[Encoding] | None = None, prefer: str = "size"
) -> Measurement:
    """The candidate :func:`pick` takes for ``arrays`` (default candidates: those of ``prefer``)."""
    if candidates is None:
        candidates = CANDIDATES + FAST_CANDIDATES if prefer == "speed" else CANDIDATES
    return pick([measure(arrays, c) for c in candidates], sum(a.nbytes for a in arrays), prefer)


def pick(results: Sequence[Measurement], raw_bytes: int, prefer: str = "size") -> Measurement:
    """The cheapest result (see :attr:`Measurement.cost`) among the smallest (see
    :data:`SIZE_TOLERANCE`), or with ``prefer="speed"`` among those smaller than ``raw_bytes``
    (all, if none is)."""
    if prefer not in PREFERENCES:
        raise UsageError(f"prefer must be one of {PREFERENCES}, got {prefer!r}")
    if not results:
        raise UsageError("no measured candidates to pick from")
    if prefer == "speed":
        eligible = [r for r in results if r.nbytes < raw_bytes] or list(results)
    else:
        smallest = min(r.nbytes for r in results)
        slack = max(smallest * SIZE_TOLERANCE, SIZE_SLACK_BYTES * results[0].arrays)
        eligible = [r for r in results if r.nbytes <= smallest + slack]
    return min(eligible, key=lambda r: r.cost)


def choose_encodings(samples: Sequence[Mapping[str, np.ndarray]], prefer: str = "size") -> dict[str, Measurement]:
    """Per-field choice on a few decoded samples (fields in the order of the first sample)."""
    choices = {}
    for field in samples[0]:
        choices[field] = choose([s[field] for s in samples], prefer=prefer)
        m = choices[field]
        raw = sum(s[field].nbytes for s in samples)
        log.info("field %s: %s, %.3f of raw", field, m.encoding.describe(), m.nbytes / max(raw, 1))
    return choices
