"""The configurations ``make bench`` times: a DataLoader built once per (reader, fields, workers), and
how one epoch of it is timed. See :mod:`benchmarks.reading` for the method."""

from __future__ import annotations

import math
import multiprocessing
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from pipeline.read.stream import StreamingDataset
from pipeline.read.stream.sources import Source

from benchmarks.common import Timings, interleave
from benchmarks.names import COMPACT, MIXED, SINGLE_THREAD, STREAMING

#: Samples per batch: per DataLoader item with workers, and the streaming dataset's own batches.
BATCH_SIZE = 8
SEED = 0
#: A measurement lasts at least this long: fast readers run several epochs per measurement, so
#: that a 50 ms epoch is not at the mercy of one scheduling hiccup; at most MAX_PASSES epochs.
MIN_MEASURE_SECONDS = 0.5
MAX_PASSES = 16


class TimedReader:
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


def fork_context() -> Any:
    """Forked workers inherit :func:`~pipeline.runtime.keep_buffers_on_heap`'s settings (and are the
    default on Linux)."""
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else None


def map_loader(dataset: Dataset, workers: int) -> DataLoader:
    sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(SEED))
    if workers == 0:
        return DataLoader(dataset, batch_size=None, sampler=sampler)
    return DataLoader(
        dataset,
        batch_size=BATCH_SIZE,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=True,
        multiprocessing_context=fork_context(),
    )


def stream_reader(
    out: Path | str,
    fields: Sequence[str],
    label: str,
    workers: int,
    threads: int | None = None,
    transform: Any = None,
    compact: bool = False,
    name: str | None = None,
    storage_options: dict | None = None,
    mixed: bool = False,
) -> TimedReader:
    """``mixed``: the output as two sources of weight 1 (:data:`~benchmarks.names.MIXED`), over as
    many samples per epoch as the output has, so that only the mixing differs."""
    samples = StreamingDataset(out, fields=fields, storage_options=storage_options).samples if mixed else None
    dataset = StreamingDataset(
        [Source(out, weight=1), Source(out, weight=1)] if mixed else out,
        fields=fields,
        epoch_size=samples,
        batch_size=BATCH_SIZE,
        seed=SEED,
        decode_threads=threads,
        transform=transform,
        compact=compact,
        storage_options=storage_options,
    )
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        persistent_workers=workers > 0,
        multiprocessing_context=fork_context() if workers else None,
    )
    name = name or (MIXED if mixed else COMPACT if compact else SINGLE_THREAD if threads == 1 else STREAMING)
    return TimedReader(name, label, workers, loader, dataset.samples, before_epoch=dataset.set_epoch)


def time_readers(readers: Sequence[TimedReader], repeats: int) -> dict[str, Timings]:
    """Warm every reader up, then time them in ``repeats`` interleaved turns; close them all,
    whatever happens (their workers and shared memory go with them)."""
    try:
        for reader in readers:
            reader.warm_up()
        return interleave({r.name: r for r in readers}, repeats)
    finally:
        for reader in readers:
            reader.close()
