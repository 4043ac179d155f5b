"""``make bench``: samples/s of the readers against the per-file ``torch.load`` baseline.

Measured on a synthetic set in the release format (default 64 samples, converted with the
default shard size and encodings), for ``img``+``label`` and for all fields, in one process and
with DataLoader workers:

* **baseline** — what the dataset's authors do: the archive extracted to one ``.pt`` file per
  sample, one ``torch.load`` per sample, in random order (:class:`TorchLoadDataset`);
* **streaming** — :class:`~pipeline.read.stream.StreamingDataset` with ``batch_size`` at the dataset
  level, under ``DataLoader(ds, batch_size=None, ...)`` as its docstring says, one epoch
  (``set_epoch``) per pass, with its default decode threads (the cores; one per DataLoader
  worker here); in process also with one decode thread (**streaming, 1 thread**);
* **zarr** — :class:`~pipeline.read.zarr_dataset.ZarrDataset` in random order (``RandomSampler``);
* **npy, uncompressed** — the reference point: each field an ``.npy`` file, ``np.load`` per field
  and sample in random order (:class:`NpyDataset`): reading without decoding, at ~9× the bytes.

The two map-style datasets deliver single samples in process (``batch_size=None``: what a random
access loop gets) and batches of :data:`BATCH_SIZE` collated by the DataLoader with workers
(one sample per inter-process message would measure IPC, not reading). Both use the same stock
``DataLoader(ds, batch_size=..., num_workers=...)``: the baseline's samples are stacked by the
default ``collate_fn``, while ZarrDataset reads each batch whole (its ``__getitems__``) into
reused shared memory, which the default ``collate_fn`` passes on as it is.

How it is timed: every configuration gets its own DataLoader, built once and kept for all epochs
(with workers: persistent workers, forked), and two untimed warm-up epochs (worker start-up,
page cache, shard indexes, digest checks of the warm-up's samples). Then the configurations
take turns, ``repeats`` rounds; in each turn a configuration runs whole epochs for at least
:data:`MIN_MEASURE_SECONDS` (one epoch for the baseline, several for fast readers, whose
64-sample epoch lasts ~0.02-0.1 s) and its turn's figure is the median of those epochs (the first
epoch after another configuration ran is slow for fast readers: caches, heap); each row reports
the median of the turns.
``vs_baseline`` compares like with like: against the baseline with the same fields and the same
number of workers, i.e. what a user gains by swapping the dataset and keeping the DataLoader
settings. (With workers the baseline ran 1.5× faster than in process for ``img``+``label`` here,
and no faster for all fields, whose 88 MB batches cost more to hand over than to load.)

Process conditions: the per-file ``torch.load`` baseline swings by ±40 % between processes,
because glibc adapts its mmap threshold to the order in which multi-MB buffers happen to be
freed: in some processes each ``torch.load`` maps fresh pages and faults every 4 KiB of them in,
in others it reuses heap. Before measuring, :func:`steady_malloc` fixes glibc's thresholds for
this process (``mallopt``, as ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` would at
start-up), so multi-MB buffers are reused from the heap; DataLoader workers are forked and
inherit it. Every system runs under these same conditions; they make the baseline faster
(about 11 ms instead of 14 or 25 ms per sample here) and steady, so the ratios are, if
anything, conservative.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import math
import multiprocessing
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from pipeline.bench.common import interleave, machine_description, markdown_table
from pipeline.convert.run import ConvertOptions, convert
from pipeline.errors import OutputError
from pipeline.read.stream import StreamingDataset
from pipeline.read.zarr_dataset import ZarrDataset
from pipeline.schema import FIELDS, sample_key
from pipeline.tools.synth import SynthConfig, write_archive, write_tree

log = logging.getLogger(__name__)

#: Samples per batch: per DataLoader item with workers, and the streaming dataset's own batches.
BATCH_SIZE = 8
#: The field sets measured, by the name the results give them.
FIELD_SETS: dict[str, tuple[str, ...]] = {"img+label": ("img", "label"), "all": FIELDS}
#: "streaming, 1 thread" runs in process only: it shows what the decode threads add, and is what
#: each DataLoader worker does anyway when workers share out the cores.
SINGLE_THREAD = "streaming, 1 thread"
#: The reference point: each field a plain ``.npy`` file, read with ``np.load`` (no decoding).
UNCOMPRESSED = "npy, uncompressed"
READERS = ("baseline", UNCOMPRESSED, "streaming", SINGLE_THREAD, "zarr")
#: glibc ``mallopt`` parameters (malloc.h) and the values :func:`steady_malloc` sets.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 << 20
TRIM_THRESHOLD = 1 << 30
SEED = 0
#: A measurement lasts at least this long: fast readers run several epochs per measurement, so
#: that a 50 ms epoch is not at the mercy of one scheduling hiccup; at most MAX_PASSES epochs.
MIN_MEASURE_SECONDS = 0.5
MAX_PASSES = 16
#: Other processes busier than this many cores during the run make its figures suspect (said so).
QUIET_CORES = 0.25


class TorchLoadDataset(Dataset):
    """The baseline: one extracted ``.pt`` file per sample, loaded with ``torch.load`` on every access.

    ``weights_only=False`` because these are our own synthetic files (trusted); never do this with
    downloaded ones. Returns ``{"__key__": key, field: tensor}`` like the other readers.
    """

    def __init__(self, root: str | Path, fields: Sequence[str]) -> None:
        self.paths = sorted(Path(root).rglob("*.pt"))
        if not self.paths:
            raise FileNotFoundError(f"{root}: no .pt files")
        # <root>/p<patient>/aug<shape>.pt, as extracted from the release
        self.keys = [sample_key(int(p.parent.name[1:]), int(p.stem[3:])) for p in self.paths]
        self.fields = tuple(fields)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        data = torch.load(self.paths[index], weights_only=False)
        return {"__key__": self.keys[index], **{f: torch.as_tensor(data[f]) for f in self.fields}}


class NpyDataset(Dataset):
    """The reference point: every field of every sample an uncompressed ``.npy`` file, loaded
    with ``np.load`` on each access. What reading costs without decoding, at ~9× the zip's bytes."""

    def __init__(self, root: str | Path, fields: Sequence[str]) -> None:
        self.dirs = sorted(p for p in Path(root).iterdir() if p.is_dir())
        self.keys = [d.name for d in self.dirs]
        self.fields = tuple(fields)

    def __len__(self) -> int:
        return len(self.dirs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        folder = self.dirs[index]
        return {"__key__": self.keys[index], **{f: torch.from_numpy(np.load(folder / f"{f}.npy")) for f in self.fields}}


def _made_once(folder: Path, write: Callable[[Path], None]) -> Path:
    """``folder`` as ``write`` makes it, reused when an earlier run finished it (a ``.complete``
    marker; a folder without one is an interrupted run's, made again)."""
    if not (folder / ".complete").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        write(folder)
        (folder / ".complete").touch()
    return folder


def write_uncompressed(tree: Path, root: Path) -> Path:
    """``root/<key>/<field>.npy`` for every sample of the extracted ``tree`` (kept for reuse)."""

    def write(root: Path) -> None:
        source = TorchLoadDataset(tree, FIELDS)
        for index, key in enumerate(source.keys):
            folder = root / key
            folder.mkdir(parents=True)
            for field, tensor in source[index].items():
                if field != "__key__":
                    np.save(folder / f"{field}.npy", tensor.numpy())

    return _made_once(root, write)


def steady_malloc() -> bool:
    """Fix glibc's mmap and trim thresholds for this process (and processes it forks).

    Why: with glibc's adaptive threshold, whether a multi-MB buffer comes from fresh, page-faulting
    mmap or from reused heap depends on the history of the process, which makes per-file
    ``torch.load`` swing by ±40 % from one process to the next. False where this is not glibc.
    """
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    mmap_set = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    trim_set = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return bool(mmap_set and trim_set)


def prepare(samples: int, scratch: Path, scheduler: str | None = None) -> tuple[Path, Path]:
    """The extracted tree (for the baseline) and the converted output of a synthetic set of 2
    patients × ``samples // 2`` shapes, reused from ``scratch`` when an earlier run made them;
    converted on ``scheduler`` if given (a Dask address), else on a local cluster."""
    config = SynthConfig(patients=2, shapes=max(1, samples // 2))
    base = Path(scratch) / f"synth-{config.patients}x{config.shapes}"
    base.mkdir(parents=True, exist_ok=True)
    archive = base / "SSMSpine_Train.zip"
    if not archive.is_file():
        write_archive(archive, config)
    tree = _made_once(base / "extracted", lambda folder: write_tree(folder, config))
    out = base / "out"
    options = ConvertOptions(scheduler=scheduler, progress=False)
    try:
        convert([archive], out, options)  # a no-op when an earlier run converted it
    except OutputError as exc:  # made by another version or with other options: ours to replace
        log.info("%s: converting again (%s)", out, exc)
        shutil.rmtree(out)
        convert([archive], out, options)
    return tree, out


class _Reader:
    """One configuration (reader, fields, workers): its DataLoader, built once; each call times
    ``passes`` full epochs and returns seconds per epoch."""

    def __init__(
        self,
        reader: str,
        fields: str,
        workers: int,
        loader: DataLoader,
        samples: int,
        before_epoch: Callable[[int], None] | None = None,
    ) -> None:
        self.reader, self.fields, self.workers = reader, fields, workers
        self.loader: DataLoader | None = loader
        self.samples = samples
        self.before_epoch = before_epoch
        self.epoch = 0
        self.passes = 1

    @property
    def name(self) -> str:
        return f"{self.reader}, {self.fields}, {self.workers} workers"

    def __call__(self) -> float:
        return statistics.median(self.epoch_seconds() for _ in range(self.passes))

    def epoch_seconds(self) -> float:
        """One full epoch (the next one: streaming follows ``set_epoch``, samplers reshuffle)."""
        if self.loader is None:
            raise RuntimeError(f"{self.name}: closed")
        if self.before_epoch is not None:
            self.before_epoch(self.epoch)
        self.epoch += 1
        seen = 0
        started = time.perf_counter()
        for item in self.loader:
            keys = item["__key__"]
            seen += 1 if isinstance(keys, str) else len(keys)
            del item  # a streaming batch's shared slot is free once its tensors are gone
        seconds = time.perf_counter() - started
        if seen != self.samples:
            raise RuntimeError(f"{self.name}: an epoch gave {seen} samples, expected {self.samples}")
        return seconds

    def warm_up(self) -> None:
        """Two untimed epochs: the first starts workers, fills the page cache, reads shard indexes
        and checks digests; the second's length sets how many epochs make one measurement."""
        self.epoch_seconds()
        seconds = self.epoch_seconds()
        self.passes = max(1, min(MAX_PASSES, math.ceil(MIN_MEASURE_SECONDS / max(seconds, 1e-6))))

    def close(self) -> None:
        """Drop the loader, which shuts its persistent workers down."""
        self.loader = None


class _OtherLoad:
    """How many cores processes other than this one and its children kept busy meanwhile.

    The machine is shared: a figure measured while someone else's job held a core means little,
    above all with DataLoader workers, so the run says how busy the rest of the machine was.
    Linux only (``/proc/stat``); ``cores`` is None elsewhere.
    """

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.machine, self.own = _machine_busy_seconds(), _own_cpu_seconds()

    @property
    def cores(self) -> float | None:
        machine = _machine_busy_seconds()
        if machine is None or self.machine is None:
            return None
        others = (machine - self.machine) - (_own_cpu_seconds() - self.own)
        return max(0.0, others / (time.perf_counter() - self.started))


def _machine_busy_seconds() -> float | None:
    try:
        with open("/proc/stat") as f:
            ticks = [int(t) for t in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    """This process and its finished (joined) children, such as DataLoader workers shut down."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _fork_context() -> Any:
    """Forked workers inherit :func:`steady_malloc`'s settings (and are the default on Linux)."""
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else None


def _map_loader(dataset: Dataset, workers: int) -> DataLoader:
    sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(SEED))
    if workers == 0:
        return DataLoader(dataset, batch_size=None, sampler=sampler)
    return DataLoader(
        dataset,
        batch_size=BATCH_SIZE,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=True,
        multiprocessing_context=_fork_context(),
    )


def _stream_reader(out: Path, fields: Sequence[str], label: str, workers: int, threads: int | None = None) -> _Reader:
    dataset = StreamingDataset(out, fields=fields, batch_size=BATCH_SIZE, seed=SEED, decode_threads=threads)
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        persistent_workers=workers > 0,
        multiprocessing_context=_fork_context() if workers else None,
    )
    name = SINGLE_THREAD if threads == 1 else "streaming"
    return _Reader(name, label, workers, loader, dataset.samples, before_epoch=dataset.set_epoch)


def _readers(tree: Path, uncompressed: Path, out: Path, workers: Iterable[int]) -> list[_Reader]:
    readers = []
    for label, fields in FIELD_SETS.items():
        for w in workers:
            baseline = TorchLoadDataset(tree, fields)
            npy = NpyDataset(uncompressed, fields)
            zarr_ds = ZarrDataset(out, fields=fields)
            readers.append(_Reader("baseline", label, w, _map_loader(baseline, w), len(baseline)))
            readers.append(_Reader(UNCOMPRESSED, label, w, _map_loader(npy, w), len(npy)))
            readers.append(_stream_reader(out, fields, label, w))
            if w == 0:
                readers.append(_stream_reader(out, fields, label, w, threads=1))
            readers.append(_Reader("zarr", label, w, _map_loader(zarr_ds, w), len(zarr_ds)))
    counts = {r.samples for r in readers}
    if len(counts) != 1:
        raise RuntimeError(f"the readers disagree on the number of samples: {sorted(counts)}")
    return readers


def run(
    samples: int = 64,
    repeats: int = 5,
    scratch: Path | None = None,
    workers: Sequence[int] = (0, 2),
    steady: bool = True,
    scheduler: str | None = None,
) -> dict:
    """Run the reading benchmark and return its figures (also printed as a table).

    ``scratch`` keeps the synthetic set, its extracted tree and its conversion for the next run
    (default: a temporary directory, removed afterwards). ``steady=False`` leaves this process's
    allocator as it is (see :func:`steady_malloc`); only meant for callers, such as tests, that do
    not measure. ``scheduler``: a Dask address to convert on instead of a local cluster.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    owned = scratch is None  # a temporary directory of ours (~1 GB for 64 samples): removed at the end
    scratch = Path(tempfile.mkdtemp(prefix="ssmspine-bench-")) if owned else Path(scratch)
    try:
        tree, out = prepare(samples, scratch, scheduler)
        uncompressed = write_uncompressed(tree, tree.parent / "npy")
        steadied = steady_malloc() if steady else False
        readers = _readers(tree, uncompressed, out, workers)
        other_load = _OtherLoad()
        try:
            for reader in readers:
                reader.warm_up()
            timings = interleave({r.name: r for r in readers}, repeats)
        finally:
            for reader in readers:
                reader.close()
            gc.collect()  # workers shut down and joined: their CPU time counts as ours
        other_cores = other_load.cores
    finally:
        if owned:
            shutil.rmtree(scratch, ignore_errors=True)

    n = readers[0].samples
    baseline = {(r.fields, r.workers): timings[r.name].median for r in readers if r.reader == "baseline"}
    results = []
    for r in readers:
        median = timings[r.name].median
        results.append(
            {
                "reader": r.reader,
                "fields": r.fields,
                "workers": r.workers,
                "samples_per_s": n / median,
                "vs_baseline": baseline[(r.fields, r.workers)] / median,
                "seconds": timings[r.name].seconds,
            }
        )
    results.sort(key=lambda x: (list(FIELD_SETS).index(x["fields"]), READERS.index(x["reader"]), x["workers"]))
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_description(),
        "samples": n,
        "batch_size": BATCH_SIZE,
        "repeats": repeats,
        "passes": {r.name: r.passes for r in readers},
        "steady_malloc": steadied,
        "other_load_cores": other_cores,
        "results": results,
    }
    print(
        f"reading {n} synthetic samples, {result['machine']}, {result['date']}; median of {repeats} interleaved "
        f"measurements (each ≥ {MIN_MEASURE_SECONDS} s of whole epochs) after 2 warm-up epochs; batches of "
        f"{BATCH_SIZE} (streaming; map-style readers with workers)"
    )
    print(
        markdown_table(
            ["system", "fields", "workers", "samples/s", "× baseline"],
            [
                [x["reader"], x["fields"], x["workers"], f"{x['samples_per_s']:.1f}", f"{x['vs_baseline']:.2f}×"]
                for x in results
            ],
        )
    )
    print(
        "× baseline: against the per-file torch.load baseline with the same fields and workers, this run; "
        + ("glibc malloc thresholds fixed for all systems (mallopt)" if steadied else "allocator left as is")
    )
    if other_cores is not None:
        busy = other_cores >= QUIET_CORES
        print(
            f"other processes kept {other_cores:.2f} of {os.cpu_count()} cores busy meanwhile"
            + (": figures with workers suffer most; measure again on a quieter machine" if busy else "")
        )
    return result
