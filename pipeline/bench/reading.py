"""``make bench``: samples/s of the readers against the per-file ``torch.load`` baseline.

Measured on a synthetic set in the release format (default 64 samples, converted with the
default shard size and encodings), for ``img``+``label`` and for all fields, in one process and
with DataLoader workers:

* **baseline** — what the dataset's authors do: the archive extracted to one ``.pt`` file per
  sample, one ``torch.load`` per sample, in random order (:class:`TorchLoadDataset`);
* **streaming** — :class:`~pipeline.stream.StreamingDataset` with ``batch_size`` at the dataset
  level, under ``DataLoader(ds, batch_size=None, ...)`` as its docstring says, one epoch
  (``set_epoch``) per pass;
* **zarr** — :class:`~pipeline.random_access.ZarrDataset` in random order (``RandomSampler``).

The two map-style datasets deliver single samples in process (``batch_size=None``: what a random
access loop gets) and batches of :data:`BATCH_SIZE` collated by the DataLoader with workers
(one sample per inter-process message would measure IPC, not reading).

How it is timed: every configuration gets its own DataLoader, built once and kept for all passes
(with workers: persistent workers, forked), and one untimed warm-up pass (worker start-up,
page cache, shard indexes, digest checks of the warm-up's samples). Then the configurations
take turns, one full epoch each, ``repeats`` rounds; each row reports the median epoch.
``vs_baseline`` compares like with like: the baseline row with the same fields and the same
number of workers.

Process conditions: the per-file ``torch.load`` baseline swings by ±40 % between processes,
because glibc adapts its mmap threshold to the order in which multi-MB buffers happen to be
freed: in some processes each ``torch.load`` maps fresh pages and faults every 4 KiB of them in,
in others it reuses heap. Before measuring, :func:`steady_malloc` fixes glibc's thresholds for
this process (``mallopt``, as ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` would at
start-up), so multi-MB buffers are reused from the heap; DataLoader workers are forked and
inherit it. Every system runs under these same conditions; they make the baseline faster and
steady, so the ratios are, if anything, conservative.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import multiprocessing
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from ..convert import ConvertOptions, convert
from ..random_access import ZarrDataset
from ..schema import FIELDS, sample_key
from ..stream import StreamingDataset
from ..synth import SynthConfig, write_archive, write_tree
from .common import interleave, machine_description, markdown_table

#: Samples per batch: per DataLoader item with workers, and the streaming dataset's own batches.
BATCH_SIZE = 8
#: The field sets measured, by the name the results give them.
FIELD_SETS: dict[str, tuple[str, ...]] = {"img+label": ("img", "label"), "all": FIELDS}
READERS = ("baseline", "streaming", "zarr")
#: glibc ``mallopt`` parameters (malloc.h) and the values :func:`steady_malloc` sets.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 << 20
TRIM_THRESHOLD = 1 << 30
SEED = 0


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
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) & bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def prepare(samples: int, scratch: Path, scheduler: str | None = None) -> tuple[Path, Path]:
    """The extracted tree (for the baseline) and the converted output of a synthetic set, reused
    from ``scratch`` when an earlier run made them; converted on ``scheduler`` if given (a Dask
    address), else on a local cluster."""
    config = SynthConfig(patients=2, shapes=max(1, samples // 2))
    base = Path(scratch) / f"synth-{config.patients}x{config.shapes}"
    base.mkdir(parents=True, exist_ok=True)
    archive = base / "SSMSpine_Train.zip"
    if not archive.is_file():
        write_archive(archive, config)
    tree = base / "extracted"
    if not (tree / ".complete").is_file():
        shutil.rmtree(tree, ignore_errors=True)
        write_tree(tree, config)
        (tree / ".complete").touch()
    out = base / "out"
    convert([archive], out, ConvertOptions(scheduler=scheduler, progress=False))  # no-op when done before
    return tree, out


class _Reader:
    """One configuration (reader, fields, workers): its DataLoader, built once; one timed epoch per call."""

    def __init__(self, reader: str, fields: str, workers: int, loader: DataLoader, samples: int,
                 before_epoch: Callable[[int], None] | None = None) -> None:  # fmt: skip
        self.reader, self.fields, self.workers = reader, fields, workers
        self.loader: DataLoader | None = loader
        self.samples = samples
        self.before_epoch = before_epoch
        self.epoch = 0

    @property
    def name(self) -> str:
        return f"{self.reader}, {self.fields}, {self.workers} workers"

    def __call__(self) -> float:
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
        seconds = time.perf_counter() - started
        del item
        if seen != self.samples:
            raise RuntimeError(f"{self.name}: an epoch gave {seen} samples, expected {self.samples}")
        return seconds

    def close(self) -> None:
        """Drop the loader, which shuts its persistent workers down."""
        self.loader = None


def _fork_context() -> Any:
    """Forked workers inherit :func:`steady_malloc`'s settings (and are the default on Linux)."""
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else None


def _map_loader(dataset: Dataset, workers: int) -> DataLoader:
    sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(SEED))
    if workers == 0:
        return DataLoader(dataset, batch_size=None, sampler=sampler)
    return DataLoader(dataset, batch_size=BATCH_SIZE, sampler=sampler, num_workers=workers,
                      persistent_workers=True, multiprocessing_context=_fork_context())  # fmt: skip


def _stream_reader(out: Path, fields: Sequence[str], label: str, workers: int) -> _Reader:
    dataset = StreamingDataset(out, fields=fields, batch_size=BATCH_SIZE, seed=SEED)
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, persistent_workers=workers > 0,
                        multiprocessing_context=_fork_context() if workers else None)  # fmt: skip
    return _Reader("streaming", label, workers, loader, dataset.samples, before_epoch=dataset.set_epoch)


def _readers(tree: Path, out: Path, workers: Iterable[int]) -> list[_Reader]:
    readers = []
    for label, fields in FIELD_SETS.items():
        for w in workers:
            baseline = TorchLoadDataset(tree, fields)
            zarr_ds = ZarrDataset(out, fields=fields)
            readers.append(_Reader("baseline", label, w, _map_loader(baseline, w), len(baseline)))
            readers.append(_stream_reader(out, fields, label, w))
            readers.append(_Reader("zarr", label, w, _map_loader(zarr_ds, w), len(zarr_ds)))
    counts = {r.samples for r in readers}
    if len(counts) != 1:
        raise RuntimeError(f"the readers disagree on the number of samples: {sorted(counts)}")
    return readers


def run(samples: int = 64, repeats: int = 5, scratch: Path | None = None,
        workers: Sequence[int] = (0, 2), steady: bool = True, scheduler: str | None = None) -> dict:  # fmt: skip
    """Run the reading benchmark and return its figures (also printed as a table).

    ``steady=False`` leaves this process's allocator as it is (see :func:`steady_malloc`);
    only meant for callers, such as tests, that do not measure. ``scheduler``: a Dask address
    to convert on instead of a local cluster started for it.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    scratch = Path(scratch or tempfile.mkdtemp(prefix="ssmspine-bench-"))
    tree, out = prepare(samples, scratch, scheduler)
    steadied = steady_malloc() if steady else False
    readers = _readers(tree, out, workers)
    try:
        for reader in readers:  # warm-up: workers, page cache, indexes, first digest checks
            reader()
        timings = interleave({r.name: r for r in readers}, repeats)
    finally:
        for reader in readers:
            reader.close()
        gc.collect()

    n = readers[0].samples
    baseline = {(r.fields, r.workers): timings[r.name].median for r in readers if r.reader == "baseline"}
    results = []
    for r in readers:
        median = timings[r.name].median
        results.append({
            "reader": r.reader,
            "fields": r.fields,
            "workers": r.workers,
            "samples_per_s": n / median,
            "vs_baseline": baseline[(r.fields, r.workers)] / median,
            "seconds": timings[r.name].seconds,
        })  # fmt: skip
    results.sort(key=lambda x: (list(FIELD_SETS).index(x["fields"]), READERS.index(x["reader"]), x["workers"]))
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_description(),
        "samples": n,
        "batch_size": BATCH_SIZE,
        "repeats": repeats,
        "steady_malloc": steadied,
        "results": results,
    }
    print(f"reading {n} synthetic samples, {result['machine']}, {result['date']}; median of {repeats} "
          f"interleaved epochs after one warm-up; batches of {BATCH_SIZE} (streaming; map-style with workers)")  # fmt: skip
    print(markdown_table(["system", "fields", "workers", "samples/s", "× baseline"], [
        [x["reader"], x["fields"], x["workers"], f"{x['samples_per_s']:.1f}", f"{x['vs_baseline']:.2f}×"]
        for x in results
    ]))  # fmt: skip
    print("× baseline: against the per-file torch.load baseline with the same fields and workers, same run; "
          + ("glibc malloc thresholds fixed for all systems (mallopt)" if steadied else "allocator left as is"))
    return result
