"""Ranged reads of an output's tar shards at a URL: ``http(s)://`` with the standard library, and any
other fsspec URL (``s3://``, ``gs://``, ``file://``, ...) through fsspec. Reads are retried with backoff
on errors that pass (:mod:`pipeline.retry`); a missing shard or a refused request fails at once.
"""

from __future__ import annotations

import http.client
import urllib.parse
from typing import Callable, Mapping, Sequence, TypeVar

from pipeline.errors import OutputError
from pipeline.retry import TRANSIENT_STATUS, TransientError, refusal, retried, retrying
from pipeline.storage import url_filesystem
from pipeline.store.range_readers import RangeReader
from pipeline.urls import safe_url

T = TypeVar("T")


class HttpRangeReader(RangeReader):
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

    def _exchange(self, path: str, headers: Mapping[str, str]) -> http.client.HTTPResponse:
        """One request; a kept-alive connection the server has closed meanwhile is reopened at once."""
        reused = self._conn is not None
        try:
            conn = self._connection()
            conn.request("GET", path, headers=dict(headers))
            return conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            self.close()
            if not reused:
                raise
        conn = self._connection()
        conn.request("GET", path, headers=dict(headers))
        return conn.getresponse()

    def _get(self, relative: str, headers: Mapping[str, str], handle: Callable[[http.client.HTTPResponse], T]) -> T:
        """``handle(response)`` of a GET of ``relative``, retried while the server or network fails transiently."""
        path = self._url.path.rstrip("/") + "/" + relative

        def attempt() -> T:
            try:
                response = self._exchange(path, headers)
                if response.status in TRANSIENT_STATUS:
                    response.read()
                    raise TransientError(f"HTTP {response.status} {response.reason}")
                return handle(response)
            except BaseException:  # a connection in an unknown state (or with a body unread) is never reused
                self.close()
                raise

        return retrying(safe_url(f"{self.root.rstrip('/')}/{relative}"), attempt)

    def fetch(self, relative: str) -> bytes:
        """A whole small file (the manifest)."""

        def handle(response: http.client.HTTPResponse) -> bytes:
            data = response.read()
            if response.status != 200:
                raise OutputError(
                    f"{safe_url(self.root.rstrip('/'))}/{relative}: HTTP {response.status} {response.reason}"
                )
            return data

        return self._get(relative, {}, handle)

    def read(self, shard: int, offset: int, length: int, into: memoryview | None = None) -> memoryview:
        name = self.name(shard)
        if into is None:
            into = memoryview(bytearray(length))

        def handle(response: http.client.HTTPResponse) -> memoryview:
            if response.status != 206:  # raising closes the connection: a server ignoring Range sends it all
                if response.status == 404:
                    raise OutputError(f"{name}: shard is missing (HTTP 404)")
                if response.status == 416:
                    raise OutputError(f"{name}: ends before byte {offset + length}; the shard is truncated (HTTP 416)")
                raise OutputError(
                    f"{name}: HTTP {response.status} {response.reason} to a Range request "
                    "(the server must support Range requests)"
                )
            total = response.getheader("Content-Range", "").rpartition("/")[2]
            if total.isdigit() and int(total) != self.sizes[shard]:
                raise self._size_mismatch(shard, int(total))
            done = 0
            while done < length:
                n = response.readinto(into[done:])
                if not n:
                    break
                done += n
            response.read()
            if done != length:  # the body ended early: the connection broke, or the shard is short
                raise http.client.IncompleteRead(bytes(into[:done]), length - done)
            return into

        return self._get(self.files[shard], {"Range": f"bytes={offset}-{offset + length - 1}"}, handle)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class FsspecRangeReader(RangeReader):
    """Any other URL fsspec understands (``file://``, ``s3://``, ``memory://``, ...).

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
        if len(data) != length:
            raise OutputError(f"{self.name(shard)}: got {len(data)} of {length} bytes at {offset}; truncated")
        return memoryview(data)

    def read_many(self, reads: Sequence[tuple[int, int, int, memoryview | None]]) -> list[memoryview]:
        """All of a batch's ranges with one ``cat_ranges``: object stores' file systems (s3fs,
        gcsfs, HTTP) send the requests concurrently, so a batch costs about one round trip, not
        one per sample. Retried as a whole when any of them fails transiently."""
        if len(reads) < 2:
            return super().read_many(reads)
        paths = [self._shard_path(shard) for shard, _, _, _ in reads]
        starts = [offset for _, offset, _, _ in reads]
        ends = [offset + length for _, offset, length, _ in reads]
        where = self.name(reads[0][0]) if len({s for s, _, _, _ in reads}) == 1 else f"{safe_url(self.root)} (a batch)"
        found = self._call(
            where, "shard is missing", lambda: self._fs.cat_ranges(paths, starts, ends, on_error="raise")
        )
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
