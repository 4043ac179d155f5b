"""``make bench``: samples/s of the readers against the per-file ``torch.load`` baseline.

Measured on a synthetic set in the release format (default 64 samples, converted with the
default shard size and encodings), for ``img``+``label`` and for all fields, in one process and
with DataLoader workers:

* **baseline** — what the dataset's authors do: the archive extracted to one ``.pt`` file per
  sample, one ``torch.load`` per sample, in random order
  (:class:`~pipeline.bench.baselines.TorchLoadDataset`);
* **streaming** — :class:`~pipeline.read.stream.StreamingDataset` with ``batch_size`` at the dataset
  level, under ``DataLoader(ds, batch_size=None, ...)`` as its docstring says, one epoch
  (``set_epoch``) per pass, with its default decode threads (the cores; one per DataLoader
  worker here); in process also with one decode thread (**streaming, 1 thread**);
* **zarr** — :class:`~pipeline.read.zarr_dataset.ZarrDataset` in random order (``RandomSampler``);
* **npy, uncompressed** — the reference point: each field an ``.npy`` file, ``np.load`` per field
  and sample in random order (:class:`~pipeline.bench.baselines.NpyDataset`): reading without
  decoding, at ~9× the bytes.

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
in others it reuses heap. Before measuring, :func:`~pipeline.runtime.keep_buffers_on_heap` fixes
glibc's thresholds for this process (``mallopt``, as ``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_`` would at start-up; the same thresholds as the conversion's workers), so
multi-MB buffers are reused from the heap; DataLoader workers are forked and inherit it. Every
system runs under these same conditions; they make the baseline faster (about 11 ms instead of 14
or 25 ms per sample here) and steady, so the ratios are, if anything, conservative.
"""

from __future__ import annotations

import gc
import math
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from pipeline.bench.baselines import NpyDataset, TorchLoadDataset, prepare, write_uncompressed
from pipeline.bench.common import OtherLoad, interleave, machine_description, markdown_table
from pipeline.read.stream import StreamingDataset
from pipeline.read.zarr_dataset import ZarrDataset
from pipeline.runtime import keep_buffers_on_heap
from pipeline.schema import FIELDS

#: Samples per batch: per DataLoader item with workers, and the streaming dataset's own batches.
BATCH_SIZE = 8
#: The field sets measured, by the name the results give them.
FIELD_SETS: dict[str, tuple[str, ...]] = {"img+label": ("img", "label"), "all": FIELDS}
#: "streaming, 1 thread" runs in process only: it shows what the decode threads add, and is what
#: each DataLoader worker does anyway when workers share out the cores.
SINGLE_THREAD = "streaming, 1 thread"
#: The reference point: each field a plain ``.npy`` file, read with ``np.load`` (no decoding).
UNCOMPRESSED = "npy, uncompressed"
#: The readers measured, in the order the results list them.
READERS = ("baseline", UNCOMPRESSED, "streaming", SINGLE_THREAD, "zarr")
SEED = 0
#: A measurement lasts at least this long: fast readers run several epochs per measurement, so
#: that a 50 ms epoch is not at the mercy of one scheduling hiccup; at most MAX_PASSES epochs.
MIN_MEASURE_SECONDS = 0.5
MAX_PASSES = 16
#: Other processes busier than this many cores during the run make its figures suspect (said so).
QUIET_CORES = 0.25


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


def _fork_context() -> Any:
    """Forked workers inherit :func:`~pipeline.runtime.keep_buffers_on_heap`'s settings (and are the
    default on Linux)."""
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
    allocator as it is (see :func:`~pipeline.runtime.keep_buffers_on_heap`); only meant for
    callers, such as tests, that do not measure. ``scheduler``: a Dask address to convert on
    instead of a local cluster.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    owned = scratch is None  # a temporary directory of ours (~1 GB for 64 samples): removed at the end
    scratch = Path(tempfile.mkdtemp(prefix="ssmspine-bench-")) if owned else Path(scratch)
    try:
        tree, out = prepare(samples, scratch, scheduler)
        uncompressed = write_uncompressed(tree, tree.parent / "npy")
        steadied = keep_buffers_on_heap() if steady else False
        readers = _readers(tree, uncompressed, out, workers)
        other_load = OtherLoad()
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
