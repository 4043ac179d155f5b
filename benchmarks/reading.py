"""``make bench``: samples/s of the readers against the per-file ``torch.load`` baseline.

Measured on a synthetic set in the release format (default 64 samples, converted with the
default shard size and encodings), for ``img``+``label`` and for all fields, in one process and
with DataLoader workers:

* **baseline** — what the dataset's authors do: the archive extracted to one ``.pt`` file per
  sample, one ``torch.load`` per sample, in random order
  (:class:`~benchmarks.baselines.TorchLoadDataset`);
* **streaming** — :class:`~pipeline.read.stream.StreamingDataset` with ``batch_size`` at the dataset
  level, under ``DataLoader(ds, batch_size=None, ...)`` as its docstring says, one epoch
  (``set_epoch``) per pass, with its default decode threads (the cores; one per DataLoader
  worker here); in process also with one decode thread (**streaming, 1 thread**); and with
  ``compact=True`` (**streaming, compact**: label and masks in their stored, narrow dtypes, for the
  training step to widen on the GPU with ``pipeline.to_device``); and so from the same set converted
  with ``prefer="speed"`` (**streaming, compact, speed codecs**: LZ4 where it decodes fastest, in
  more bytes; the figures record both outputs' sizes);
* **streaming, mixed** (img+label only) — the same output given as two sources of weight 1
  (``[Source(out, weight=1), Source(out, weight=1)]``, ``epoch_size`` its sample count): each source
  draws a random half of every epoch, shuffled together, read through one index over two stores;
  against **streaming** it is the cost of mixing (:mod:`pipeline.read.stream.mixing`);
* **zarr** — :class:`~pipeline.read.zarr_dataset.ZarrDataset` in random order (``RandomSampler``);
* **npy, uncompressed** — the reference point: each field an ``.npy`` file, ``np.load`` per field
  and sample in random order (:class:`~benchmarks.baselines.NpyDataset`): reading without
  decoding, at ~9× the bytes.

With augmentation (field set **img+label, elastic**, with 0, 1 and 2 workers): every sample's
``img`` and ``label`` deformed as the dataset's authors augment training samples
(:class:`~benchmarks.augment.ElasticDeformation`, tens of ms a sample: far more than decoding).
The baseline does it the per-file way, in its ``__getitem__`` (:class:`~benchmarks.augment.Augmented`),
so in DataLoader workers when there are some and in the loop's process otherwise; streaming passes it as
``transform=``, so it runs on the decode threads, in the workers when there are some.

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
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterable, Sequence

from pipeline.read.zarr_dataset import ZarrDataset
from pipeline.runtime import keep_buffers_on_heap
from pipeline.schema import FIELDS
from pipeline.tools.info import info

from benchmarks.augment import Augmented, ElasticDeformation
from benchmarks.baselines import NpyDataset, TorchLoadDataset, prepare, prepare_for_speed, write_uncompressed
from benchmarks.common import OtherLoad, machine_description, markdown_table
from benchmarks.loaders import (
    BATCH_SIZE,
    MIN_MEASURE_SECONDS,
    SEED,
    TimedReader,
    map_loader,
    stream_reader,
    time_readers,
)
from benchmarks.names import AUGMENTED, COMPACT, MIXED, SINGLE_THREAD, SPEED_COMPACT, STREAMING, UNCOMPRESSED

#: The field sets measured, by the name the results give them.
FIELD_SETS: dict[str, tuple[str, ...]] = {"img+label": ("img", "label"), "all": FIELDS}
#: The readers measured with augmentation (field set AUGMENTED).
AUGMENTED_READERS = ("baseline", "streaming")
#: The readers measured, in the order the results list them.
READERS = ("baseline", UNCOMPRESSED, "streaming", MIXED, COMPACT, SPEED_COMPACT, SINGLE_THREAD, "zarr")
#: The field set of the mixing rows: the reading is the same, only the order and the stores differ.
MIXED_FIELDS = "img+label"
#: Other processes busier than this many cores during the run make its figures suspect (said so).
QUIET_CORES = 0.25


def output_sizes(out: Path, speed_out: Path) -> dict[str, dict]:
    """Bytes of the two outputs read (``"size"``: the default, ``"speed"``: ``prefer="speed"``),
    with their source's, and each field's encoding."""
    sizes = {}
    for prefer, path in (("size", out), ("speed", speed_out)):
        summary = info(path)
        sizes[prefer] = {
            "source_bytes": summary["source_bytes"],
            "zarr_bytes": summary["zarr_bytes"],
            "wds_bytes": summary["wds_bytes"],
            "encodings": {f: spec["encoding"] for f, spec in summary["schema"].items()},
        }
    return sizes


def _readers(
    tree: Path,
    uncompressed: Path,
    out: Path,
    speed_out: Path,
    workers: Iterable[int],
    augment_workers: Iterable[int],
) -> list[TimedReader]:
    readers = []
    for label, fields in FIELD_SETS.items():
        for w in workers:
            baseline = TorchLoadDataset(tree, fields)
            npy = NpyDataset(uncompressed, fields)
            zarr_ds = ZarrDataset(out, fields=fields)
            readers.append(TimedReader("baseline", label, w, map_loader(baseline, w), len(baseline)))
            readers.append(TimedReader(UNCOMPRESSED, label, w, map_loader(npy, w), len(npy)))
            readers.append(stream_reader(out, fields, label, w))
            if label == MIXED_FIELDS:
                readers.append(stream_reader(out, fields, label, w, mixed=True))
            readers.append(stream_reader(out, fields, label, w, compact=True))
            readers.append(stream_reader(speed_out, fields, label, w, compact=True, name=SPEED_COMPACT))
            if w == 0:
                readers.append(stream_reader(out, fields, label, w, threads=1))
            readers.append(TimedReader("zarr", label, w, map_loader(zarr_ds, w), len(zarr_ds)))
    image_label, elastic = FIELD_SETS["img+label"], ElasticDeformation()
    for w in augment_workers:
        baseline = Augmented(TorchLoadDataset(tree, image_label), elastic, seed=SEED)
        readers.append(TimedReader("baseline", AUGMENTED, w, map_loader(baseline, w), len(baseline)))
        readers.append(stream_reader(out, image_label, AUGMENTED, w, transform=elastic))
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
    augment_workers: Sequence[int] = (0, 1, 2),
) -> dict:
    """Run the reading benchmark and return its figures (also printed as a table).

    ``scratch`` keeps the synthetic set, its extracted tree and its conversion for the next run
    (default: a temporary directory, removed afterwards). ``steady=False`` leaves this process's
    allocator as it is (see :func:`~pipeline.runtime.keep_buffers_on_heap`); only meant for
    callers, such as tests, that do not measure. ``scheduler``: a Dask address to convert on
    instead of a local cluster. ``augment_workers``: the worker counts of the rows with augmentation.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    owned = scratch is None  # a temporary directory of ours (~1 GB for 64 samples): removed at the end
    scratch = Path(tempfile.mkdtemp(prefix="ssmspine-bench-")) if owned else Path(scratch)
    try:
        tree, out = prepare(samples, scratch, scheduler)
        speed_out = prepare_for_speed(out, scheduler)
        sizes = output_sizes(out, speed_out)
        uncompressed = write_uncompressed(tree, tree.parent / "npy")
        steadied = keep_buffers_on_heap() if steady else False
        readers = _readers(tree, uncompressed, out, speed_out, workers, augment_workers)
        other_load = OtherLoad()
        try:
            timings = time_readers(readers, repeats)
        finally:
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
    field_sets = [*FIELD_SETS, AUGMENTED]
    results.sort(key=lambda x: (field_sets.index(x["fields"]), READERS.index(x["reader"]), x["workers"]))
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_description(),
        "samples": n,
        "batch_size": BATCH_SIZE,
        "repeats": repeats,
        "passes": {r.name: r.passes for r in readers},
        "steady_malloc": steadied,
        "other_load_cores": other_cores,
        "output_bytes": sizes,
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
    rate = {(x["reader"], x["workers"]): x["samples_per_s"] for x in results if x["fields"] == MIXED_FIELDS}
    mixing = [f"{rate[(MIXED, w)] / rate[(STREAMING, w)]:.2f}× ({w} workers)" for w in workers]
    print(f"mixing two sources, {MIXED_FIELDS}: {', '.join(mixing)} the rate of streaming one")
    if other_cores is not None:
        busy = other_cores >= QUIET_CORES
        print(
            f"other processes kept {other_cores:.2f} of {os.cpu_count()} cores busy meanwhile"
            + (": figures with workers suffer most; measure again on a quieter machine" if busy else "")
        )
    return result
