"""``StreamingDataset``: the tar shards as a shuffled, sharded, resumable ``IterableDataset``.

Why not stock WebDataset plus ``split_by_node`` and a shuffle buffer: a buffer only mixes samples
that sit near each other in the shards (same patient, consecutive shapes), ranks and DataLoader
workers must agree on who reads what without communicating, and a job stopped mid-epoch must be
able to continue, possibly on a different number of ranks, without repeating or skipping samples.
The manifest records the byte range of every field of every sample in its tar, so a sample can be
fetched by ranged reads of only the fields asked for. That makes a true global shuffle cheap:

* **Order** (:func:`epoch_order`): epoch ``e`` visits the split in one permutation drawn from
  ``(seed, e)`` alone — the same on every rank, whatever the world size or worker count.
* **Partition** (:func:`rank_positions`, :func:`worker_batches`): of the epoch's *positions* not
  yet consumed, ``[start, N)``, rank ``r`` of ``W`` takes ``start + r, start + r + W, ...``. So
  after every rank has consumed ``c`` samples, exactly the positions ``[start, start + c·W)`` are
  done, and the progress of the whole job is one number (``position``). Global step ``t`` with
  per-rank batch ``B`` covers the contiguous window ``[start + t·W·B, start + (t+1)·W·B)`` of the
  order, whatever ``W`` is: resuming on another world size with the same global batch replays the
  same global batches. A rank's sequence is cut into batches; batch ``j`` goes to DataLoader
  worker ``j % num_workers``, which is the order the DataLoader collects them in, so the rank's
  sequence does not depend on ``num_workers``.
* **Equal lengths**: every rank takes ``ceil(R / W)`` of the ``R`` remaining positions; the last
  step is padded by wrapping around to the start of the epoch's order (at most ``W - 1``
  duplicate samples per epoch). With ``drop_last=True`` the tail that does not fill a whole
  global step (``W`` samples, or ``W·batch_size`` when the dataset batches) is left out instead —
  fewer than that many samples, different ones each epoch.
* **Storage**: local paths (``os.preadv`` into one reused buffer), ``http(s)://`` (ranged GETs on
  a kept-alive connection, standard library only) and any other fsspec URL (``cat_file`` ranges).
  Adjacent fields of a sample are fetched with one read.
* **Decoding** goes straight from the read buffer into the output tensor. Inside DataLoader
  workers the tensor is a reused shared-memory slot (see "batches in shared memory" below), so
  handing a multi-MB batch to the main process copies nothing and faults in no fresh pages.

State for resumption is a handful of numbers (:meth:`StreamingDataset.state_dict`) kept in the
main process; workers learn the epoch and start of a pass from a two-number shared tensor that
the main process writes. Shared memory here is anonymous (file descriptors), so nothing outlives
a crash.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import logging
import math
import os
import urllib.parse
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
import xxhash
from torch.utils.data import IterableDataset, get_worker_info

from . import codecs, manifest
from .schema import OutputError, schema_from_json

log = logging.getLogger(__name__)

STATE_FORMAT = "ssmspine-stream-state"
STATE_VERSION = 1
#: Requested fields of one sample separated by at most this many bytes are read with one request.
LOCAL_COALESCE_GAP = 64 << 10
REMOTE_COALESCE_GAP = 1 << 20
_NPY_MAGIC = b"\x93NUMPY"
_BLOSC_HEADER = 16


# --------------------------------------------------------------------------- order and partition


def epoch_order(samples: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The global order of epoch ``epoch``: sample indices (manifest order) in visiting order.

    A uniform permutation seeded by ``(seed, epoch)`` only: every rank computes the same one, and it
    does not change with the world size, so ranks can take disjoint slices of it at any point.
    """
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be non-negative, got seed={seed}, epoch={epoch}")
    if not shuffle:
        return np.arange(samples)
    return np.random.default_rng([seed, epoch]).permutation(samples)


def rank_share(remaining: int, world_size: int, batch_size: int | None = None, drop_last: bool = False) -> int:
    """How many of ``remaining`` positions each of ``world_size`` ranks takes (the same for all)."""
    if remaining <= 0:
        return 0
    if drop_last:
        step = world_size * (batch_size or 1)
        return remaining // step * (batch_size or 1)
    return -(-remaining // world_size)


def rank_positions(samples: int, start: int, rank: int, world_size: int, batch_size: int | None = None,
                   drop_last: bool = False) -> np.ndarray:  # fmt: skip
    """Positions in the epoch's order that ``rank`` visits, in order, when ``[0, start)`` are done.

    Positions ``>= samples`` are padding: position ``p`` stands for ``p % samples``.
    """
    share = rank_share(samples - start, world_size, batch_size, drop_last)
    return start + rank + world_size * np.arange(share, dtype=np.int64)


def rank_samples(samples: int, seed: int, epoch: int, rank: int, world_size: int, start: int = 0,
                 batch_size: int | None = None, drop_last: bool = False,
                 shuffle: bool = True) -> np.ndarray:  # fmt: skip
    """Sample indices (manifest order) that ``rank`` visits in epoch ``epoch``, from position ``start``."""
    positions = rank_positions(samples, start, rank, world_size, batch_size, drop_last)
    return epoch_order(samples, seed, epoch, shuffle)[positions % samples] if len(positions) else positions


def worker_batches(share: int, batch_size: int, worker: int, num_workers: int) -> list[range]:
    """Rows of a rank's sequence that ``worker`` yields, as batches: batch ``j`` → worker ``j % W``.

    The DataLoader collects one item from each worker in turn, so this reproduces the rank's
    sequence exactly for any ``num_workers``.
    """
    starts = range(worker * batch_size, share, num_workers * batch_size)
    return [range(a, min(a + batch_size, share)) for a in starts]


def consumed_position(start: int, seen: int, world_size: int, samples: int) -> int:
    """Global position after every rank has consumed ``seen`` samples of a pass begun at ``start``."""
    return min(start + seen * world_size, samples)


def source_neighbour_ratio(sequence: Sequence[int], patient: Sequence[int], aug: Sequence[int],
                           window: int = 16) -> float:  # fmt: skip
    """How often samples that are neighbours in the source end up close together, relative to chance.

    Source neighbours are samples of the same patient whose shape numbers differ by one: they sit
    next to each other in the shards and look alike. The figure counts pairs of them at most
    ``window`` apart in ``sequence`` (16: about one batch), divided by the count expected if
    ``sequence`` were a uniformly random permutation of its samples. About 1 is as good as a
    shuffle gets; the source order itself scores about ``N / (2·window)``.
    """
    seq = np.asarray(sequence)
    p, a = np.asarray(patient)[seq], np.asarray(aug)[seq]
    observed, pairs = 0, 0
    for d in range(1, min(window, len(seq) - 1) + 1):
        close = (p[d:] == p[:-d]) & (np.abs(a[d:] - a[:-d]) == 1)
        observed += int(np.count_nonzero(close))
        pairs += len(seq) - d
    distinct = sorted(set(zip(p.tolist(), a.tolist())))
    neighbours = sum(1 for (p0, a0), (p1, a1) in zip(distinct, distinct[1:]) if p0 == p1 and a1 - a0 == 1)
    n = len(distinct)
    expected = pairs * 2 * neighbours / (n * (n - 1)) if n > 1 else 0.0
    return observed / expected if expected else 0.0


# --------------------------------------------------------------------------- where bytes come from


class _Store:
    """Ranged reads of the shards of one output; one per process, opened lazily."""

    coalesce_gap = REMOTE_COALESCE_GAP

    def __init__(self, root: str, files: Sequence[str], sizes: Sequence[int]) -> None:
        self.root = root
        self.files = list(files)
        self.sizes = list(sizes)
        self._buffer = bytearray()

    def name(self, shard: int) -> str:
        return f"{self.root.rstrip('/')}/{self.files[shard]}"

    def buffer(self, length: int) -> memoryview:
        if len(self._buffer) < length:
            self._buffer = bytearray(max(length, 2 * len(self._buffer)))
        return memoryview(self._buffer)[:length]

    def read(self, shard: int, offset: int, length: int) -> memoryview:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def _size_mismatch(self, shard: int, actual: int) -> OutputError:
        return OutputError(f"{self.name(shard)}: has {actual} bytes, the manifest says {self.sizes[shard]}: "
                           "the shard is truncated or was replaced; convert again")  # fmt: skip


class _LocalStore(_Store):
    coalesce_gap = LOCAL_COALESCE_GAP
    max_open = 64  # shards kept open at once; a global shuffle may touch every shard per batch

    def __init__(self, root: str, files: Sequence[str], sizes: Sequence[int]) -> None:
        super().__init__(root, files, sizes)
        self._fds: dict[int, int] = {}

    def _fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is None:
            path = self.name(shard)
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                raise OutputError(f"{path}: shard is missing; convert again or fix the path") from None
            except OSError as exc:
                raise OutputError(f"{path}: cannot open shard ({exc})") from exc
            size = os.fstat(fd).st_size
            if size != self.sizes[shard]:
                os.close(fd)
                raise self._size_mismatch(shard, size)
            if len(self._fds) >= self.max_open:
                os.close(self._fds.pop(next(iter(self._fds))))
            self._fds[shard] = fd
        return fd

    def read(self, shard: int, offset: int, length: int) -> memoryview:
        view = self.buffer(length)
        fd = self._fd(shard)
        done = 0
        while done < length:
            n = os.preadv(fd, [view[done:]], offset + done)
            if n == 0:
                raise OutputError(f"{self.name(shard)}: ends before byte {offset + length}; the shard is truncated")
            done += n
        return view

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class _HttpStore(_Store):
    """``http(s)://`` with ``Range`` requests on one kept-alive connection (standard library only)."""

    def __init__(self, root: str, files: Sequence[str], sizes: Sequence[int]) -> None:
        super().__init__(root, files, sizes)
        self._url = urllib.parse.urlsplit(root)
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._url.scheme == "https" else http.client.HTTPConnection
            self._conn = cls(self._url.netloc, timeout=60)
        return self._conn

    def _get(self, path: str, headers: Mapping[str, str]) -> http.client.HTTPResponse:
        for attempt in (0, 1):  # a kept-alive connection the server closed fails once; reconnect
            try:
                conn = self._connection()
                conn.request("GET", path, headers=dict(headers))
                return conn.getresponse()
            except (http.client.HTTPException, OSError) as exc:
                self.close()
                if attempt:
                    raise OutputError(f"{self.root}{path}: request failed ({exc})") from exc
        raise AssertionError("unreachable")

    def fetch(self, relative: str) -> bytes:
        """A whole small file (the manifest)."""
        path = self._url.path.rstrip("/") + "/" + relative
        response = self._get(path, {})
        data = response.read()
        if response.status != 200:
            raise OutputError(f"{self.root.rstrip('/')}/{relative}: HTTP {response.status} {response.reason}")
        return data

    def read(self, shard: int, offset: int, length: int) -> memoryview:
        name = self.name(shard)
        path = self._url.path.rstrip("/") + "/" + self.files[shard]
        response = self._get(path, {"Range": f"bytes={offset}-{offset + length - 1}"})
        if response.status != 206:
            self.close()  # drops whatever body came (a server ignoring Range sends the whole shard)
            if response.status == 404:
                raise OutputError(f"{name}: shard is missing (HTTP 404)")
            if response.status == 416:
                raise OutputError(f"{name}: ends before byte {offset + length}; the shard is truncated (HTTP 416)")
            raise OutputError(f"{name}: HTTP {response.status} {response.reason} to a Range request "
                              "(the server must support Range requests)")  # fmt: skip
        total = response.getheader("Content-Range", "").rpartition("/")[2]
        if total.isdigit() and int(total) != self.sizes[shard]:
            self.close()
            raise self._size_mismatch(shard, int(total))
        view = self.buffer(length)
        done = 0
        while done < length:
            n = response.readinto(view[done:])
            if not n:
                break
            done += n
        response.read()
        if done != length:
            self.close()
            raise OutputError(f"{name}: got {done} of {length} bytes at {offset}; the shard is truncated")
        return view

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class _FsspecStore(_Store):
    """Any other URL fsspec understands (``file://``, ``s3://``, ``memory://``, ...)."""

    def __init__(self, root: str, files: Sequence[str], sizes: Sequence[int]) -> None:
        super().__init__(root, files, sizes)
        import fsspec.core

        self._fs, self._path = fsspec.core.url_to_fs(root)
        self._checked: set[int] = set()

    def fetch(self, relative: str) -> bytes:
        try:
            return self._fs.cat_file(f"{self._path.rstrip('/')}/{relative}")
        except FileNotFoundError:
            raise OutputError(f"{self.root.rstrip('/')}/{relative}: not found") from None

    def read(self, shard: int, offset: int, length: int) -> memoryview:
        path = f"{self._path.rstrip('/')}/{self.files[shard]}"
        try:
            if shard not in self._checked:
                size = self._fs.size(path)
                if size != self.sizes[shard]:
                    raise self._size_mismatch(shard, size)
                self._checked.add(shard)
            data = self._fs.cat_file(path, start=offset, end=offset + length)
        except FileNotFoundError:
            raise OutputError(f"{self.name(shard)}: shard is missing") from None
        if len(data) != length:
            raise OutputError(f"{self.name(shard)}: got {len(data)} of {length} bytes at {offset}; truncated")
        return memoryview(data)


def _is_url(root: str) -> bool:
    return "://" in root


def _store_class(root: str) -> type[_Store]:
    if not _is_url(root):
        return _LocalStore
    if root.split("://", 1)[0].lower() in ("http", "https"):
        return _HttpStore
    return _FsspecStore


def read_stream_manifest(root: str) -> dict:
    """The manifest of the output at a local directory or URL, checked for format and version."""
    if not _is_url(root):
        return manifest.read_manifest(root)
    store = _store_class(root)(root, [], [])
    try:
        data = json.loads(store.fetch(manifest.MANIFEST_NAME))  # type: ignore[attr-defined]
    except json.JSONDecodeError as exc:
        raise OutputError(f"{root.rstrip('/')}/{manifest.MANIFEST_NAME}: not valid JSON ({exc})") from exc
    finally:
        store.close()
    if data.get("format") != manifest.FORMAT or data.get("format_version") != manifest.FORMAT_VERSION:
        raise OutputError(f"{root}: not an {manifest.FORMAT} v{manifest.FORMAT_VERSION} manifest")
    return data


# --------------------------------------------------------------------------- decoding


def _decode_into(payload: memoryview, out: np.ndarray, name: str, headers: dict[bytes, tuple]) -> None:
    """Decode one ``npy.blosc`` member straight into ``out`` (a contiguous slot of a batch).

    Same format as :func:`pipeline.tar_shards.decode_field`, but writes into memory the caller
    owns (a shared-memory batch) instead of a new array, and checks the frame's sizes first.
    """
    if bytes(payload[:6]) != _NPY_MAGIC:
        raise OutputError(f"{name}: not an npy.blosc member (bad magic)")
    header_length = int.from_bytes(payload[8:10], "little") + 10
    header = bytes(payload[:header_length])
    parsed = headers.get(header)
    if parsed is None:
        try:
            file = io.BytesIO(header)
            np.lib.format.read_magic(file)
            parsed = np.lib.format.read_array_header_1_0(file)
        except ValueError as exc:
            raise OutputError(f"{name}: damaged npy header ({exc})") from exc
        headers[header] = parsed
    shape, fortran_order, dtype = parsed
    if tuple(shape) != out.shape or dtype != out.dtype or (fortran_order and out.ndim > 1):
        raise OutputError(f"{name}: holds {dtype} {tuple(shape)}, the manifest's schema says {out.dtype} {out.shape}")
    frame = payload[header_length:]
    if len(frame) < _BLOSC_HEADER:
        raise OutputError(f"{name}: damaged Blosc data (frame of {len(frame)} bytes)")
    nbytes = int.from_bytes(frame[4:8], "little")
    cbytes = int.from_bytes(frame[12:16], "little")
    if nbytes != out.nbytes or cbytes != len(frame):
        raise OutputError(f"{name}: damaged Blosc data (frame says {nbytes} bytes in {cbytes}, "
                          f"expected {out.nbytes} in {len(frame)})")  # fmt: skip
    try:
        if out.nbytes:
            codecs.decode(frame, out=memoryview(out.reshape(-1)).cast("B"))
    except Exception as exc:  # numcodecs raises RuntimeError/ValueError on a damaged frame
        raise OutputError(f"{name}: damaged Blosc data ({exc})") from exc


# --------------------------------------------------------------------------- batches in shared memory
#
# A DataLoader worker hands a batch to the main process through shared memory. Fresh shared
# memory is expensive: it is never backed by transparent huge pages, so every 4 KiB page faults
# on first touch (measured here: ~1.8 ms per MB, more than decoding the data). Each worker
# therefore keeps a small pool of shared-memory *slots*, one batch each, and reuses a slot once
# the process that received its batch has dropped every tensor of it. The receiving process
# learns that from a finalizer on the object that owns the tensors' memory, and writes "free"
# into the slot's header; the worker only ever writes into free slots. The slots are anonymous
# (file-descriptor) shared memory: nothing outlives the processes that map it.

_ALIGN = 64
_FREE, _BUSY = 0, 1
#: Slots a worker keeps for reuse; more batches in flight at once get one-off slots.
MAX_SLOTS = 6


@dataclass(frozen=True)
class _Layout:
    """Where each field of a batch lies in a slot: (field, offset, per-sample shape, numpy dtype)."""

    fields: tuple[tuple[str, int, tuple[int, ...], str], ...]
    batch_size: int
    nbytes: int

    @classmethod
    def of(cls, specs: Mapping[str, tuple[tuple[int, ...], np.dtype]], batch_size: int) -> "_Layout":
        offset, fields = _ALIGN, []  # the first _ALIGN bytes hold the header (the slot's state)
        for field, (shape, dtype) in specs.items():
            fields.append((field, offset, tuple(shape), np.dtype(dtype).str))
            offset += -(-batch_size * math.prod(shape) * np.dtype(dtype).itemsize // _ALIGN) * _ALIGN
        return cls(tuple(fields), batch_size, offset)

    def arrays(self, base: np.ndarray, rows: int) -> dict[str, np.ndarray]:
        """Field arrays of ``rows`` samples, as views of the uint8 array ``base`` of a slot."""
        out = {}
        for field, offset, shape, dtype in self.fields:
            dt = np.dtype(dtype)
            size = rows * math.prod(shape) * dt.itemsize
            out[field] = base[offset : offset + size].view(dt).reshape((rows, *shape))
        return out


def _shared_storage(nbytes: int) -> torch.UntypedStorage:
    try:
        return torch.UntypedStorage._new_shared(nbytes)
    except (AttributeError, RuntimeError):  # private API; the public one copies, but works
        return torch.empty(nbytes, dtype=torch.uint8).share_memory_().untyped_storage()


class _Slot:
    def __init__(self, nbytes: int) -> None:
        self.storage = _shared_storage(nbytes)
        self.bytes = torch.empty(0, dtype=torch.uint8).set_(self.storage, 0, (nbytes,)).numpy()
        self.header = self.bytes[:8].view(np.int64)


class _SlotPool:
    """The shared-memory slots of one DataLoader worker."""

    def __init__(self, layout: _Layout) -> None:
        self.layout = layout
        self.slots: list[_Slot] = []

    def take(self) -> _Slot:
        for slot in self.slots:
            if slot.header[0] == _FREE:
                break
        else:
            slot = _Slot(self.layout.nbytes)
            if len(self.slots) < MAX_SLOTS:
                self.slots.append(slot)
        slot.header[0] = _BUSY
        return slot


class _SharedBatch:
    """A batch in a slot, on its way out of a worker: unpickles as a plain dict of tensors.

    Deliberately not a Mapping, so the DataLoader's ``default_convert`` passes it through as is.
    """

    def __init__(self, slot: _Slot, layout: _Layout, rows: int, keys: list[str]) -> None:
        self.slot, self.layout, self.rows, self.keys = slot, layout, rows, keys

    def __reduce__(self):
        return _rebuild_shared_batch, (self.slot.storage, self.layout, self.rows, self.keys, os.getpid())

    def __getitem__(self, key: str) -> Any:
        """Read access for a custom ``collate_fn`` in the worker (the slot then stays taken)."""
        return _rebuild_shared_batch(self.slot.storage, self.layout, self.rows, self.keys, os.getpid())[key]


class _SlotMemory:
    """Owns a received slot's memory for numpy and torch; its death frees the slot for reuse."""

    def __init__(self, storage: torch.UntypedStorage) -> None:
        self.storage = storage
        self.__array_interface__ = {"shape": (storage.nbytes(),), "typestr": "|u1",
                                    "data": (storage.data_ptr(), False), "version": 3}  # fmt: skip


def _release(header: torch.Tensor) -> None:
    header[0] = _FREE


def _rebuild_shared_batch(storage: torch.UntypedStorage, layout: _Layout, rows: int, keys: list[str],
                          worker_pid: int) -> dict:  # fmt: skip
    owner = _SlotMemory(storage)
    base = np.asarray(owner)  # every view of it, and every tensor made from one, keeps ``owner`` alive
    tensors = {f: torch.from_numpy(a) for f, a in layout.arrays(base, rows).items()}
    if os.getpid() != worker_pid:  # inside the worker itself the slot is never handed back
        header = torch.empty(0, dtype=torch.int64).set_(storage, 0, (1,))
        weakref.finalize(owner, _release, header)
    return {"__key__": keys, **tensors}


# --------------------------------------------------------------------------- the dataset


@dataclass(frozen=True)
class _Index:
    """Where every sample's requested fields lie: small numpy arrays, cheap to pickle to workers."""

    keys: list[str]
    shard: np.ndarray  # (N,) shard number of each sample
    ranges: np.ndarray  # (N, F, 2) offset, size of each requested field's payload
    digests: np.ndarray | None  # (N, F, 16) xxh3-128 of each requested field's bytes
    files: list[str]
    sizes: list[int]


def _build_index(data: Mapping[str, Any], split: str, fields: Sequence[str], check_digests: bool) -> _Index:
    shards = manifest.shards_of(data, split)
    info = data["splits"][split]
    schema_fields = list(data["schema"])
    columns = [schema_fields.index(f) for f in fields]
    keys = [k for s in shards for k in s.keys]
    if keys != list(info["keys"]):
        raise OutputError(f"the manifest's shards of split {split!r} do not hold its keys in order")
    n, f = len(keys), len(fields)
    shard = np.empty(n, np.int32)
    ranges = np.empty((n, f, 2), np.int64)
    digests = np.empty((n, f, 16), np.uint8) if check_digests else None
    row = 0
    for number, meta in enumerate(shards):
        if len(meta.payloads) != meta.samples:
            raise OutputError(f"{meta.file}: the manifest has no payload ranges for its samples; convert again")
        for i, payload in enumerate(meta.payloads):
            if len(payload) != 2 * len(schema_fields):
                raise OutputError(f"{meta.file}: {meta.keys[i]}: payload ranges do not match the schema")
            shard[row] = number
            ranges[row] = [payload[2 * c : 2 * c + 2] for c in columns]
            if digests is not None:
                for j, field in enumerate(fields):
                    digests[row, j] = np.frombuffer(bytes.fromhex(meta.digests[field][i]), np.uint8)
            row += 1
    return _Index(keys=keys, shard=shard, ranges=ranges, digests=digests, files=[s.file for s in shards],
                  sizes=[s.bytes for s in shards])  # fmt: skip


def _world_from_environment() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    if "WORLD_SIZE" in os.environ:
        return int(os.environ.get("RANK", "0")), int(os.environ["WORLD_SIZE"])
    return 0, 1


class StreamingDataset(IterableDataset):
    """One split of a converted output, streamed from its tar shards, for (distributed) training.

    ``root`` is the output directory or its URL (``http(s)://...`` or any fsspec URL); ``fields``
    are decoded (``None``: all of them), nothing else is read. Items are
    ``{"__key__": str, field: Tensor}`` or, with ``batch_size``, batches
    ``{"__key__": [str, ...], field: Tensor(b, ...)}`` assembled before they leave the DataLoader
    worker — use ``DataLoader(ds, batch_size=None, num_workers=W, persistent_workers=True)``
    then. Dataset-level batches are the fast path with workers (one reused shared-memory slot
    per batch, no copy) and make a rank's sequence independent of ``num_workers``. Persistent
    workers follow :meth:`set_epoch` and keep their slots warm across epochs. A batch from a
    worker stays valid for as long as the receiving process holds any tensor (or view) of it;
    only then is its memory reused — don't pass such tensors on to yet another process.

    ``shuffle=False`` keeps manifest order; ``seed`` and the epoch fix the order otherwise.
    ``drop_last`` drops, rather than pads, the tail that would make ranks unequal.
    ``check_digests`` compares each decoded field with its digest in the manifest (xxh3-128) the
    first time a process decodes it: Blosc frames carry no checksum, so without it a corrupted
    payload may decode to wrong values silently. It costs 10-20 % of the first epoch.

    Ranks: ``rank``/``world_size`` if given, else ``torch.distributed`` when initialised, else the
    ``RANK``/``WORLD_SIZE`` environment, else one process — always decided in the main process
    and handed to DataLoader workers. Every rank yields ``len(ds)`` samples per epoch; see the
    module docstring for order, partition, padding (default) and ``drop_last``.

    Epochs and resumption::

        ds.load_state_dict(checkpoint["data"])          # optional: resume
        for epoch in range(ds.epoch, epochs):
            ds.set_epoch(epoch)                          # keeps a loaded mid-epoch position
            for batch in ds.track(loader):               # counts what the loop receives
                ...
                checkpoint = {..., "data": ds.state_dict()}

    :meth:`state_dict` is a few numbers (epoch, global position); it is the same on every rank,
    and may be loaded by a job with another world size: the remaining samples are re-split. A
    finished epoch is saved as the start of the next. Without :meth:`track`, pass the number of
    samples this rank has received in the current pass: ``ds.state_dict(samples_seen=k)``.
    Exact resumption with DataLoader workers needs dataset-level ``batch_size`` (or a DataLoader
    batch of one sample), because workers batch their own samples otherwise.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", fields: Sequence[str] | None = ("img", "label"),
                 shuffle: bool = True, seed: int = 0, batch_size: int | None = None, drop_last: bool = False,
                 check_digests: bool = True, rank: int | None = None,
                 world_size: int | None = None) -> None:  # fmt: skip
        self.root = os.fspath(root)
        if not _is_url(self.root):
            self.root = str(Path(self.root))
        self.split = split
        self.shuffle = shuffle
        self.seed = int(seed)
        self.batch_size = batch_size
        self.drop_last = drop_last
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be at least 1 or None, got {batch_size}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither")
        if world_size is not None and not 0 <= rank < world_size:  # type: ignore[operator]
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self._explicit_world = None if world_size is None else (int(rank), int(world_size))  # type: ignore[arg-type]
        data = read_stream_manifest(self.root)
        schema = schema_from_json(data["schema"])
        self.fields = tuple(schema) if fields is None else tuple(fields)
        unknown = [f for f in self.fields if f not in schema]
        if unknown or not self.fields:
            raise ValueError(f"unknown field(s) {unknown}; the output has {list(schema)}")
        self.fields = tuple(f for f in schema if f in self.fields)  # schema order = order in the tar
        self._specs = {f: (schema[f].shape, schema[f].numpy_dtype) for f in self.fields}
        try:
            self._torch_dtypes = {f: torch.from_numpy(np.empty(0, dt)).dtype for f, (_, dt) in self._specs.items()}
        except TypeError as exc:
            raise OutputError(f"{self.root}: a field's dtype has no torch equivalent ({exc})") from exc
        self._index = _build_index(data, split, self.fields, check_digests)
        self._keys_digest = hashlib.sha256("\n".join(self._index.keys).encode()).hexdigest()[:16]
        self._rank, self._world_size = self._resolve_world()
        self._epoch = 0
        self._start = 0  # global position where the current (or next) pass starts
        self._seen = 0  # samples this rank has received in the current pass (counted by track)
        self._pass_world = self._world_size
        self._finished = False  # the current pass ran to its end
        # (epoch, start of the next pass), read by DataLoader workers when a pass begins: persistent
        # workers keep their copy of the dataset across epochs, so they learn these from here
        self._next_pass = torch.zeros(2, dtype=torch.int64).share_memory_()
        self._loader_exact = True  # False: workers batch their own samples, position is not a prefix
        self._store: _Store | None = None
        self._store_pid = 0
        self._verified = np.zeros((0, 0), bool)
        self._slots: _SlotPool | None = None
        self._slots_pid = 0
        self._headers: dict[bytes, tuple] = {}

    # ----------------------------------------------------------------- ranks, epochs, state

    def _resolve_world(self) -> tuple[int, int]:
        """Rank and world size: explicit, else torch.distributed, else (in a worker) as handed over."""
        if self._explicit_world is not None:
            return self._explicit_world
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if get_worker_info() is not None and not distributed:
            return self._rank, self._world_size  # a spawned worker: what the main process decided
        rank, world = _world_from_environment()
        self._rank, self._world_size = rank, world
        return rank, world

    @property
    def rank(self) -> int:
        return self._resolve_world()[0]

    @property
    def world_size(self) -> int:
        return self._resolve_world()[1]

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def keys(self) -> list[str]:
        """Sample keys of the split, in manifest order (indices of :func:`epoch_order`)."""
        return self._index.keys

    @property
    def samples(self) -> int:
        """Samples in the split (all ranks together, without padding)."""
        return len(self._index.keys)

    @property
    def position(self) -> int:
        """Positions of this epoch's global order consumed by the whole job so far."""
        return consumed_position(self._start, self._seen, self._pass_world, self.samples)

    def _epoch_done(self, position: int, world_size: int) -> bool:
        return rank_share(self.samples - position, world_size, self.batch_size, self.drop_last) == 0

    def __len__(self) -> int:
        """Samples this rank yields in the next (or current) pass: the epoch, or what is left of it."""
        start = 0 if self._finished else self._start
        return rank_share(self.samples - start, self.world_size, self.batch_size, self.drop_last)

    @property
    def num_batches(self) -> int:
        """Items this rank yields per pass when the dataset batches (``len(self)`` otherwise)."""
        return math.ceil(len(self) / (self.batch_size or 1))

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (and so the order) of the next pass.

        Setting the epoch a pass is already in (for example one just loaded by
        :meth:`load_state_dict`) keeps its position, unless that pass has run to its end.
        """
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        if epoch != self._epoch or self._finished:
            self._epoch, self._start, self._seen, self._finished = epoch, 0, 0, False
        self._publish()

    def _publish(self) -> None:
        self._next_pass[0], self._next_pass[1] = self._epoch, 0 if self._finished else self._start

    def track(self, batches: Iterable[dict]) -> Iterator[dict]:
        """Yield the items of ``batches`` (a DataLoader over this dataset), counting them.

        The count of samples the training loop has received is what :meth:`state_dict` saves;
        it is kept here, in the main process, because DataLoader workers hold only copies.
        """
        loader_batch = getattr(batches, "batch_size", None)
        workers = getattr(batches, "num_workers", 0)
        if self.batch_size is not None and loader_batch is not None:
            raise ValueError("the dataset already batches: use DataLoader(ds, batch_size=None, ...)")
        if self._finished:  # the same epoch again, without set_epoch
            self._start, self._seen, self._finished = 0, 0, False
        else:  # a new pass continues where the last one stopped
            self._start, self._seen = self.position, 0
        self._pass_world = self.world_size
        self._loader_exact = self.batch_size is not None or workers == 0 or loader_batch in (None, 1)
        self._publish()
        for batch in batches:
            keys = batch["__key__"]
            self._seen += 1 if isinstance(keys, str) else len(keys)
            yield batch
        self._finished = True
        self._publish()

    def state_dict(self, samples_seen: int | None = None) -> dict:
        """Where the job stands in its epoch: tiny, JSON-serialisable, the same on every rank.

        ``samples_seen``: samples this rank has received since the current pass started, if the
        loop was not wrapped in :meth:`track`.
        """
        world = self._pass_world if samples_seen is None else self.world_size
        if samples_seen is None:
            if not self._loader_exact:
                raise ValueError("DataLoader workers batch their own samples here, so the samples seen do "
                                 "not form a prefix of the order: give the dataset batch_size=... for "
                                 "exact resumption")  # fmt: skip
            position = self.position
        else:
            position = consumed_position(self._start, samples_seen, world, self.samples)
        epoch = self._epoch
        if (self._finished and samples_seen is None) or self._epoch_done(position, world):
            epoch, position = epoch + 1, 0
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "split": self.split,
            "samples": self.samples,
            "keys_sha256": self._keys_digest,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "epoch": epoch,
            "position": int(position),
            "world_size": world,  # informative: any world size may load the state
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue where :meth:`state_dict` left off, on this job's world size and batch size."""
        if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
            raise ValueError(f"not a {STATE_FORMAT} v{STATE_VERSION} state: {dict(state)!r}")
        expected = {"split": self.split, "samples": self.samples, "keys_sha256": self._keys_digest,
                    "seed": self.seed, "shuffle": self.shuffle}  # fmt: skip
        differ = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
        if differ:
            raise ValueError(f"the state belongs to another dataset or order: (saved, here) = {differ}")
        position = int(state["position"])
        if not 0 <= position <= self.samples:
            raise ValueError(f"position {position} is outside [0, {self.samples}]")
        self._epoch, self._start, self._seen, self._finished = int(state["epoch"]), position, 0, False
        self._publish()
        self._pass_world = self.world_size

    # ----------------------------------------------------------------- iteration

    def __getstate__(self) -> dict:
        # pickled in the main process for spawned workers: hand over the main process's ranks
        if get_worker_info() is None:
            self._resolve_world()
        state = dict(self.__dict__)
        state["_store"] = None
        state["_verified"] = np.zeros((0, 0), bool)
        state["_slots"] = None
        state["_headers"] = {}
        return state

    def __iter__(self) -> Iterator[dict]:
        rank, world = self._resolve_world()
        worker = get_worker_info()
        if worker is None:
            epoch, start = self._epoch, 0 if self._finished else self._start
        else:
            epoch, start = (int(x) for x in self._next_pass.tolist())
        sequence = rank_samples(self.samples, self.seed, epoch, rank, world, start, self.batch_size,
                                self.drop_last, self.shuffle)  # fmt: skip
        wid, workers = (0, 1) if worker is None else (worker.id, worker.num_workers)
        batches = worker_batches(len(sequence), self.batch_size or 1, wid, workers)
        return self._generate(sequence, batches, shared=worker is not None)

    def _generate(self, sequence: np.ndarray, batches: list[range], shared: bool) -> Iterator[dict]:
        # the store (open shards, an HTTP connection) stays with the dataset for the next pass
        for rows in batches:
            indices = sequence[rows.start : rows.stop]
            if self.batch_size is None:
                yield self._read_batch(indices, shared=False, batched=False)
            else:
                yield self._read_batch(indices, shared=shared, batched=True)

    def _read_batch(self, indices: np.ndarray, shared: bool, batched: bool) -> Any:
        keys = [self._index.keys[i] for i in indices]
        if shared:
            if self._slots is None or self._slots_pid != os.getpid():
                self._slots, self._slots_pid = _SlotPool(_Layout.of(self._specs, self.batch_size or 1)), os.getpid()
            slot = self._slots.take()
            arrays = self._slots.layout.arrays(slot.bytes, len(indices))
            for row, index in enumerate(indices):
                self._read_sample(int(index), {f: a[row] for f, a in arrays.items()})
            return _SharedBatch(slot, self._slots.layout, len(indices), keys)
        lead = (len(indices),) if batched else ()
        tensors = {f: torch.empty(lead + shape, dtype=self._torch_dtypes[f]) for f, (shape, _) in self._specs.items()}
        arrays = {f: t.numpy() for f, t in tensors.items()}
        for row, index in enumerate(indices):
            self._read_sample(int(index), {f: a[row] if batched else a for f, a in arrays.items()})
        return {"__key__": keys if batched else keys[0], **tensors}

    def _read_sample(self, index: int, out: Mapping[str, np.ndarray]) -> None:
        """Fetch the requested fields of one sample, coalescing close ranges, and decode into ``out``."""
        if self._store is None or self._store_pid != os.getpid():  # never share a forked parent's connection
            self._store = _store_class(self.root)(self.root, self._index.files, self._index.sizes)
            self._store_pid = os.getpid()
            weakref.finalize(self, self._store.close)
            self._verified = np.zeros(self._index.ranges.shape[:2], bool)  # what this process has checked
        store, shard, ranges = self._store, int(self._index.shard[index]), self._index.ranges[index]
        key = self._index.keys[index]
        j, count = 0, len(self.fields)
        while j < count:
            first, end = j, int(ranges[j, 0] + ranges[j, 1])
            while j + 1 < count and ranges[j + 1, 0] - end <= store.coalesce_gap:
                j += 1
                end = int(ranges[j, 0] + ranges[j, 1])
            j += 1
            base = int(ranges[first, 0])
            view = store.read(shard, base, end - base)
            for k in range(first, j):
                field = self.fields[k]
                name = f"{store.name(shard)}: {key}.{field}"
                offset = int(ranges[k, 0]) - base
                _decode_into(view[offset : offset + int(ranges[k, 1])], out[field], name, self._headers)
                if self._index.digests is not None and not self._verified[index, k]:
                    got = xxhash.xxh3_128_digest(memoryview(out[field]).cast("B"))
                    if got != self._index.digests[index, k].tobytes():
                        raise OutputError(f"{name}: decodes to other values than were converted; the shard is corrupt")
                    self._verified[index, k] = True

    def __repr__(self) -> str:
        return (f"StreamingDataset({self.root!r}, split={self.split!r}, fields={self.fields}, "
                f"samples={self.samples}, batch_size={self.batch_size}, rank={self._rank}/{self._world_size}, "
                f"epoch={self._epoch})")  # fmt: skip
