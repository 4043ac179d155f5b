"""Fetching and decoding samples for one process: ranged reads of the shards, then decoding on threads.

Fetching happens in the calling thread, in order (stores need not be thread-safe): for local shards a
view of their memory map, for remote ones a ranged read into the batch's buffer, merging the requested
fields that lie close together. Decoding, the CPU-bound part, runs on the decode threads, a sample per
call, straight into the output arrays, and checks each field's digest the first time this process
decodes it.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import torch
import xxhash

from pipeline.errors import OutputError
from pipeline.read.batch_memory.memory import Specs
from pipeline.read.batch_memory.pool import SlotPool, slot_pool_for
from pipeline.read.collate import DatasetBatch
from pipeline.read.decode_threads import DecodeThreads, Decoding
from pipeline.read.items import Delivery, sample_item
from pipeline.read.stream.composite import open_index_reader
from pipeline.read.stream.index import SampleIndex
from pipeline.read.transforms import Transform, apply_transform, stack_into_slot, tensors_of
from pipeline.store.cached_ranges import CachedRangeReader, CacheOptions
from pipeline.store.location import RangeReader
from pipeline.store.range_readers import RangeRead
from pipeline.store.tar_shards import decode_field


class FetchSpan(NamedTuple):
    """One read of a sample's fields: fields ``first`` to ``stop`` (exclusive), adjacent in the shard,
    at ``offset`` for ``length`` bytes."""

    first: int
    stop: int
    offset: int
    length: int


class Fetched(NamedTuple):
    """The bytes of a :class:`FetchSpan`'s fields."""

    first: int
    stop: int
    view: memoryview


class DecodeJob(NamedTuple):
    """One sample for a decode thread: its fetched bytes, where its fields go, and what follows."""

    index: int  # in the split
    shard_name: str  # for messages
    pieces: list[Fetched]
    out: dict[str, np.ndarray]
    row: int  # in its batch
    after: Callable[[int, dict[str, np.ndarray]], None] | None


class SampleReader:
    """Reads the ``fields`` of samples of ``index`` under ``root``, for the process that made it.

    Holds what must not cross a fork: the open store (memory maps, a connection) and which
    digests this process has checked. A dataset makes one per process and never pickles it.
    """

    def __init__(
        self,
        root: str,
        index: SampleIndex,
        specs: Specs,
        torch_dtypes: Mapping[str, torch.dtype],
        batch_size: int | None,
        decoder: DecodeThreads,
        transform: Transform | None = None,
        seed: int = 0,
        storage_options: Mapping[str, Any] | None = None,
        cache: CacheOptions | None = None,
    ) -> None:
        self.root, self._index, self._decoder = root, index, decoder
        self._storage_options, self._cache = storage_options, cache
        self.fields = tuple(specs)
        self._specs, self._torch_dtypes, self._batch_size = specs, torch_dtypes, batch_size
        self._transform, self._seed = transform, seed
        self._slots: SlotPool | None = None
        self._store: RangeReader | None = None
        self._verified = np.zeros(index.ranges.shape[:2], bool)  # what this process has checked
        self.pid = os.getpid()

    def start_batch(
        self,
        indices: np.ndarray,
        padding: np.ndarray,
        keys: Sequence[str],
        delivery: Delivery,
        epoch: int,
        appearances: np.ndarray | None = None,
    ) -> Pending:
        """A batch (or sample) of ``indices`` (``padding``: which of them only pad the rank's
        share) being fetched and decoded, to be delivered as ``delivery`` says: batches into reused
        slots (shared memory from a DataLoader worker, private memory in the main process), single
        samples into new tensors. With a transform, see :meth:`_start_transformed` (``appearances``:
        which appearance in the epoch each sample is, for a mixture's upsampled ones)."""
        keys = [keys[i] for i in indices]
        pad = [bool(p) for p in padding]
        if self._transform is not None:
            seen = [0] * len(keys) if appearances is None else [int(a) for a in appearances]
            return self._start_transformed(indices, keys, pad, delivery, epoch, seen)
        if delivery is not Delivery.SAMPLE:
            self._slots = slot_pool_for(self._slots, self._specs, self._batch_size or 1, delivery.shared)
            batch = self._slots.batch(len(indices), keys, pad)
            outs = [{f: a[row] for f, a in batch.arrays.items()} for row in range(len(indices))]
            whole = batch if delivery.shared else DatasetBatch(batch)
            return Pending(self.start(indices, outs), lambda: whole)
        tensors = {f: torch.empty(spec.shape, dtype=self._torch_dtypes[f]) for f, spec in self._specs.items()}
        arrays = {f: t.numpy() for f, t in tensors.items()}
        return Pending(self.start(indices, [arrays]), lambda: sample_item(keys[0], pad[0], tensors))

    def _start_transformed(
        self, indices: np.ndarray, keys: list[str], pad: list[bool], delivery: Delivery, epoch: int, seen: list[int]
    ) -> Pending:
        """Decode each sample into fresh arrays and transform it on the decode threads; once all
        are done, stack the results into a slot shaped like them (or hand over the one sample)."""
        outs = [{f: np.empty(spec.shape, spec.dtype) for f, spec in self._specs.items()} for _ in indices]
        results: list[dict[str, np.ndarray]] = [{} for _ in indices]
        transform = self._transform

        def after(row: int, out: dict[str, np.ndarray]) -> None:
            results[row] = apply_transform(transform, out, keys[row], self._seed, epoch, seen[row])  # type: ignore[arg-type]

        def deliver() -> Any:
            if delivery is Delivery.SAMPLE:
                return sample_item(keys[0], pad[0], tensors_of(results[0]))
            shared = delivery.shared
            self._slots, batch = stack_into_slot(self._slots, results, keys, pad, shared, self._batch_size or 1)
            return batch if shared else DatasetBatch(batch)

        return Pending(self.start(indices, outs, after, background=True), deliver)

    def start(
        self,
        indices: np.ndarray,
        outs: Sequence[dict[str, np.ndarray]],
        after: Callable[[int, dict[str, np.ndarray]], None] | None = None,
        background: bool = False,
    ) -> Decoding:
        """Fetch the requested fields of these samples, then start decoding each into its ``outs``
        entry, and calling ``after(row, out)`` on the decode thread once a sample is decoded
        (``background``: on the decode threads even for one sample or one thread).

        Fetching happens here (stores need not be thread-safe): for local shards a view of their
        memory map, for remote ones ranged reads into the batch's buffer, all of a batch's at once
        where the store can (:meth:`RangeReader.read_many`). Decoding, the CPU-bound part, runs on
        the decode threads, a sample per call.
        """
        store = self._open_store()
        plans = [self._fetch_plan(int(i), store.coalesce_gap) for i in indices]
        total = sum(span.length for plan in plans for span in plan) if store.copies else 0
        buffer = memoryview(np.empty(total, np.uint8))  # a batch's own: the previous one may still be decoding
        reads, at = [], 0
        for index, plan in zip(indices, plans):
            for span in plan:
                into = buffer[at : at + span.length] if store.copies else None
                reads.append(RangeRead(int(self._index.shard[index]), span.offset, span.length, into))
                at += span.length
        views = iter(store.read_many(reads))  # a batch's reads at once where the store can
        jobs = []
        for row, (index, plan, out) in enumerate(zip(indices, plans, outs)):
            shard = int(self._index.shard[index])
            pieces = [Fetched(span.first, span.stop, next(views)) for span in plan]
            jobs.append(DecodeJob(int(index), store.name(shard), pieces, out, row, after))
        return self._decoder.start(self._decode_sample, jobs, background)

    def _open_store(self) -> RangeReader:
        if self._store is None:
            self._store = open_index_reader(self._index, self._storage_options)  # its sources' stores
            if self._cache is not None:  # shards at URLs read from local copies once copied (docs/READERS.md)
                roots = [part.root for part in self._index.parts for _ in range(part.shards)]
                index, options = self._index, self._storage_options
                self._store = CachedRangeReader(self._store, roots, index.sha256s, self._cache, options)
            weakref.finalize(self, self._store.close)
        return self._store

    def _fetch_plan(self, index: int, gap: int) -> list[FetchSpan]:
        """The reads of one sample, merging the requested fields that lie at most ``gap`` bytes apart in the shard."""
        ranges, plan, j, count = self._index.ranges[index], [], 0, len(self.fields)
        while j < count:
            first, end = j, int(ranges[j, 0] + ranges[j, 1])
            while j + 1 < count and ranges[j + 1, 0] - end <= gap:
                j += 1
                end = int(ranges[j, 0] + ranges[j, 1])
            j += 1
            plan.append(FetchSpan(first, j, int(ranges[first, 0]), end - int(ranges[first, 0])))
        return plan

    def _decode_sample(self, job: DecodeJob) -> None:
        """Decode one fetched sample into ``out``, checking each field's digest the first time."""
        index, shard_name, pieces, out, row, after = job
        ranges, key = self._index.ranges[index], self._index.keys[index]
        for first, stop, view in pieces:
            base = int(ranges[first, 0])
            for k in range(first, stop):
                field = self.fields[k]
                name = f"{shard_name}: {key}.{field}"
                offset = int(ranges[k, 0]) - base
                decode_field(view[offset : offset + int(ranges[k, 1])], name, out=out[field])
                if self._index.digests is not None and not self._verified[index, k]:
                    values = out[field]
                    if values.dtype != self._index.source_dtypes[k]:  # compact: digests are of the source's bytes
                        values = values.astype(self._index.source_dtypes[k])
                    got = xxhash.xxh3_128_digest(memoryview(values).cast("B"))
                    if got != self._index.digests[index, k].tobytes():
                        raise OutputError(f"{name}: decodes to other values than were converted; the shard is corrupt")
                    self._verified[index, k] = True
        if after is not None:
            after(row, out)


@dataclass(frozen=True)
class Pending:
    """An item being read: the decoding under way, and what gives the item once it has ended."""

    decoding: Decoding
    deliver: Callable[[], Any]

    def finish(self) -> Any:
        self.decoding.wait()
        return self.deliver()


def read_ahead(batches: Iterable[range], start: Callable[[range], Pending], one_at_a_time: bool) -> Iterator[Any]:
    """The batches in order, each started (fetched, decoding) by ``start``.

    In the main process the next batch decodes on the decode threads while the caller works on
    this one (one batch ahead); DataLoader workers (``one_at_a_time``) read one at a time, as the
    DataLoader already asks each of them for batches ahead. An error starting a batch is raised
    in its turn, after the batches before it; a batch read ahead but never delivered is let finish.
    """
    pending: Pending | None = None  # started, not yet delivered
    try:
        for rows in batches:
            try:
                started = start(rows)
            except Exception as exc:  # raised in its turn, after the batches before it
                started = Pending(Decoding(error=exc), lambda: None)
            previous, pending = pending, started
            if previous is not None:
                yield previous.finish()
            if one_at_a_time:
                previous, pending = pending, None
                yield previous.finish()
        if pending is not None:
            previous, pending = pending, None
            yield previous.finish()
    finally:
        if pending is not None:  # read ahead, never delivered (the caller stopped, or an error)
            pending.decoding.settle()
