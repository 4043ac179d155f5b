"""Ranged reads of an output's tar shards at a URL, through fsspec (``http(s)://``, ``s3://``,
``gs://``, ``file://``, ...). Reads are retried with backoff on errors that pass (:mod:`pipeline.retry`);
a missing shard or a refused request fails at once.

``http(s)://`` had a client of its own until 2026-12 (standard-library ``Range`` GETs, one at a time on
one kept-alive connection). On one local server it was not faster beyond noise than fsspec's HTTP, whose
``cat_ranges`` sends a batch's reads at once (``python -m benchmarks s3``, docs/BENCHMARKS.md), and it
was 6× slower on a server that leaves Nagle's algorithm on; so one client serves every URL.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence, TypeVar

from pipeline.errors import OutputError
from pipeline.retry import refusal, retried
from pipeline.storage import url_filesystem
from pipeline.store.range_readers import RangeReader
from pipeline.urls import safe_url

T = TypeVar("T")


class FsspecRangeReader(RangeReader):
    """Any URL fsspec understands (``http(s)://``, ``s3://``, ``file://``, ``memory://``, ...).

    ``storage_options`` go to fsspec (credentials, endpoints); by default it finds them where
    it usually does (the environment, configuration files).
    """

    def __init__(
        self, root: str, files: Sequence[str], sizes: Sequence[int], storage_options: Mapping | None = None
    ) -> None:
        super().__init__(root, files, sizes)
        self._fs, self._path = url_filesystem(root, storage_options)
        self._checked: set[int] = set()

    def _call(self, where: str, missing: str, read: Callable[[], T], path: str = "") -> T:
        """``read()`` retried while it fails transiently; lasting failures are one-line errors
        (``path``: the object's path in the file system, which a library's "not found" repeats)."""

        def failure(error: Exception) -> OutputError:
            return OutputError(f"{where}: {refusal(error, path, missing, failed='cannot be read')}")

        return retried(where, read, failure)

    def fetch(self, relative: str) -> bytes:
        where = f"{safe_url(self.root.rstrip('/'))}/{relative}"
        path = f"{self._path.rstrip('/')}/{relative}"
        return self._call(where, "not found", lambda: self._fs.cat_file(path), path)

    copies = False  # fsspec hands over fresh bytes

    def _shard_path(self, shard: int) -> str:
        path = f"{self._path.rstrip('/')}/{self.files[shard]}"
        if shard not in self._checked:
            size = self._call(self.name(shard), "shard is missing", lambda: self._fs.size(path), path)
            if size != self.sizes[shard]:
                raise self._size_mismatch(shard, size)
            self._checked.add(shard)
        return path

    def _checked_length(self, shard: int, offset: int, length: int, data: bytes) -> memoryview:
        if len(data) > length:  # fsspec's HTTP hands over a whole 200 answer to a ranged read
            raise OutputError(
                f"{self.name(shard)}: the server sent {len(data)} bytes for a Range request of {length} "
                f"at {offset}: it must support Range requests"
            )
        if len(data) != length:
            raise OutputError(f"{self.name(shard)}: got {len(data)} of {length} bytes at {offset}; truncated")
        return memoryview(data)

    def read_many(self, reads: Sequence[tuple[int, int, int, memoryview | None]]) -> list[memoryview]:
        """All of a batch's ranges with one ``cat_ranges``: object stores' file systems (s3fs,
        gcsfs, HTTP) send the requests concurrently, so a batch costs about one round trip, not
        one per sample. When some fail transiently, only those are tried again (a batch sent again
        whole would risk as many new failures on a flaky network as it retries)."""
        if len(reads) < 2:
            return super().read_many(reads)
        paths = [self._shard_path(shard) for shard, _, _, _ in reads]
        starts = [offset for _, offset, _, _ in reads]
        ends = [offset + length for _, offset, length, _ in reads]
        where = self.name(reads[0][0]) if len({s for s, _, _, _ in reads}) == 1 else f"{safe_url(self.root)} (a batch)"
        found: list = [None] * len(reads)
        pending = list(range(len(reads)))

        def attempt() -> list:
            nonlocal pending
            got = self._fs.cat_ranges(
                [paths[i] for i in pending], [starts[i] for i in pending], [ends[i] for i in pending], on_error="return"
            )
            failed = [(i, data) for i, data in zip(pending, got) if isinstance(data, BaseException)]
            for i, data in zip(pending, got):
                if not isinstance(data, BaseException):
                    found[i] = data
            pending = [i for i, _ in failed]
            if failed:  # the first failure decides: tried again if it passes, raised at once if not
                raise failed[0][1]
            return found

        self._call(where, "shard is missing", attempt)
        return [
            self._checked_length(shard, offset, length, data) for (shard, offset, length, _), data in zip(reads, found)
        ]

    def read(self, shard: int, offset: int, length: int, into: memoryview | None = None) -> memoryview:
        path = self._shard_path(shard)
        where = self.name(shard)
        data = self._call(
            where, "shard is missing", lambda: self._fs.cat_file(path, start=offset, end=offset + length), path
        )
        return self._checked_length(shard, offset, length, data)
