"""The shards of several outputs read as one store: a global shard number → (that output's reader, its own shard).

Why a reader over readers rather than sources known to the fetching code: a combined
:class:`~pipeline.read.stream.index.SampleIndex` numbers the shards of all its sources one after
another, so :class:`~pipeline.read.stream.fetch.SampleReader` fetches from a mixture exactly as from
one output; each output keeps its own kind of store (memory maps for a directory, fsspec for a URL).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from pipeline.read.stream.index import SampleIndex
from pipeline.store.location import open_range_reader
from pipeline.store.range_readers import RangeRead, RangeReader


class CompositeRangeReader(RangeReader):
    """Ranged reads of shards numbered across several stores, each read by its own store.

    It copies into the caller's memory if any of its stores does (a store that maps ignores the
    memory offered); reads of one sample are merged across the smallest of the stores' gaps.
    """

    def __init__(self, readers: Sequence[RangeReader]) -> None:
        super().__init__("", [f for r in readers for f in r.files], [n for r in readers for n in r.sizes])
        self._readers = list(readers)
        counts = [len(r.files) for r in readers]
        self._owner = np.repeat(np.arange(len(readers)), counts)
        self._local = np.arange(sum(counts)) - np.repeat(np.cumsum([0, *counts[:-1]]), counts)
        self.copies = any(r.copies for r in readers)
        self.coalesce_gap = min(r.coalesce_gap for r in readers)

    def name(self, shard: int) -> str:
        return self._readers[self._owner[shard]].name(int(self._local[shard]))

    def read(self, shard: int, offset: int, length: int, into: memoryview | None = None) -> memoryview:
        return self._readers[self._owner[shard]].read(int(self._local[shard]), offset, length, into)

    def read_many(self, reads: Sequence[RangeRead]) -> list[memoryview]:
        """Each store's reads at once (where it can), the views given back in the order asked."""
        by_store: dict[int, list[int]] = {}
        for i, read in enumerate(reads):
            by_store.setdefault(int(self._owner[read.shard]), []).append(i)
        views: list[Any] = [None] * len(reads)
        for store, asked in by_store.items():
            local = [RangeRead(int(self._local[reads[i].shard]), *reads[i][1:]) for i in asked]
            for i, view in zip(asked, self._readers[store].read_many(local)):
                views[i] = view
        return views

    def close(self) -> None:
        for reader in self._readers:
            reader.close()


def open_index_reader(index: SampleIndex, storage_options: Mapping[str, Any] | None = None) -> RangeReader:
    """The store that reads ``index``'s shards: its output's own, or one over its sources' stores."""
    readers = [
        open_range_reader(
            part.root,
            index.files[part.first_shard : part.first_shard + part.shards],
            index.sizes[part.first_shard : part.first_shard + part.shards],
            storage_options,
        )
        for part in index.parts
    ]
    return readers[0] if len(readers) == 1 else CompositeRangeReader(readers)
