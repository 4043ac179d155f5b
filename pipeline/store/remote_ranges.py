"""Ranged reads of an output's tar shards at a URL, through fsspec (``http(s)://``, ``s3://``,
``gs://``, ``file://``, ...), by way of :mod:`pipeline.io`: each shard is a
:class:`~pipeline.io.byte_source.RemoteObject` of one :class:`~pipeline.io.folder.RemoteFolder`, and
a batch's ranges go out together (:func:`~pipeline.io.byte_source.read_many`). Reads are retried with
backoff on errors that pass (:mod:`pipeline.retry`); a missing shard or a refused request fails at once.

``http(s)://`` had a client of its own until 2026-12 (standard-library ``Range`` GETs, one at a time on
one kept-alive connection). On one local server it was not faster beyond noise than fsspec's HTTP, whose
``cat_ranges`` sends a batch's reads at once (``python -m benchmarks s3``, docs/BENCHMARKS.md), and it
was 6× slower on a server that leaves Nagle's algorithm on; so one client serves every URL.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from pipeline.errors import OutputError
from pipeline.io.byte_source import ObjectRange, RemoteObject, read_many
from pipeline.io.folder import RemoteFolder
from pipeline.io.remote_calls import RemoteCalls
from pipeline.store.range_readers import RangeRead, RangeReader

#: A shard's lasting failures: one line naming it; a missing one says so.
SHARD_CALLS = RemoteCalls(missing="shard is missing")


class FsspecRangeReader(RangeReader):
    """Any URL fsspec understands (``http(s)://``, ``s3://``, ``file://``, ``memory://``, ...).

    ``storage_options`` go to fsspec (credentials, endpoints); by default it finds them where
    it usually does (the environment, configuration files).
    """

    def __init__(
        self, root: str, files: Sequence[str], sizes: Sequence[int], storage_options: Mapping | None = None
    ) -> None:
        super().__init__(root, files, sizes)
        self._folder = RemoteFolder(root, storage_options, SHARD_CALLS)
        self._folder.fs  # noqa: B018 - a URL fsspec cannot open fails now, naming it
        self._shards: dict[int, RemoteObject] = {}

    def fetch(self, relative: str) -> bytes:
        """The whole object ``relative`` (the manifest); "not found" names it."""
        return self._folder.object(relative, RemoteCalls()).read_all()

    copies = False  # fsspec hands over fresh bytes

    def _shard(self, shard: int) -> RemoteObject:
        """Shard number ``shard``, its size checked against the manifest on first use."""
        found = self._shards.get(shard)
        if found is None:
            found = self._folder.object(self.files[shard])
            size = found.size()
            if size != self.sizes[shard]:
                raise self._size_mismatch(shard, size)
            self._shards[shard] = found
        return found

    def _checked_length(self, shard: int, offset: int, length: int, data: bytes) -> memoryview:
        if len(data) > length:  # fsspec's HTTP hands over a whole 200 answer to a ranged read
            raise OutputError(
                f"{self.name(shard)}: the server sent {len(data)} bytes for a Range request of {length} "
                f"at {offset}: it must support Range requests"
            )
        if len(data) != length:
            raise OutputError(f"{self.name(shard)}: got {len(data)} of {length} bytes at {offset}; truncated")
        return memoryview(data)

    def read_many(self, reads: Sequence[RangeRead]) -> list[memoryview]:
        """All of a batch's ranges at once (:func:`~pipeline.io.byte_source.read_many`): a batch costs
        about one round trip, not one per sample."""
        if len(reads) < 2:
            return super().read_many(reads)
        ranges = [ObjectRange(self._shard(shard), offset, length) for shard, offset, length, _ in reads]
        shards = {shard for shard, _, _, _ in reads}
        where = self.name(reads[0][0]) if len(shards) == 1 else f"{self._folder.name} (a batch)"
        found = read_many(ranges, where)
        return [
            self._checked_length(shard, offset, length, data) for (shard, offset, length, _), data in zip(reads, found)
        ]

    def read(self, shard: int, offset: int, length: int, into: memoryview | None = None) -> memoryview:
        return self._checked_length(shard, offset, length, self._shard(shard).read(offset, length))
