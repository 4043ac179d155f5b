"""Where the bytes of a converted output come from: ranged reads of its tar shards, and its manifest.

The manifest records the byte range of every field of every sample in its tar, so a sample is
fetched by ranged reads of only the fields asked for — which is what makes a global shuffle
cheap. One store per process, opened lazily, chosen by :func:`range_reader_class` from the root:

* a local path: memory maps of the shards, a bounded number kept mapped;
* ``http(s)://``: ``Range`` GETs on one kept-alive connection, standard library only;
* any other fsspec URL (``file://``, ``s3://``, ``memory://``, ...): ``cat_file`` ranges.

Every store checks a shard's size against the manifest before trusting its offsets. Adjacent
fields of a sample (at most ``coalesce_gap`` bytes apart) are fetched with one read. Remote reads
are retried with backoff on errors that pass (:mod:`pipeline.retry`); a missing shard or a
refused request fails at once.
"""

from __future__ import annotations

import http.client
import mmap
import os
import urllib.parse
from typing import Callable, Mapping, Sequence, TypeVar

from pipeline.errors import OutputError, SSMSpineError
from pipeline.retry import TRANSIENT_STATUS, TransientError, has_status, reason, retrying
from pipeline.storage import url_filesystem
from pipeline.store import manifest
from pipeline.urls import is_url, safe_url

T = TypeVar("T")

#: Requested fields of one sample separated by at most this many bytes are read with one request.
LOCAL_COALESCE_GAP = 64 << 10
REMOTE_COALESCE_GAP = 1 << 20


class RangeReader:
    """Ranged reads of the shards of one output; one per process, opened lazily."""

    coalesce_gap = REMOTE_COALESCE_GAP

    def __init__(self, root: str, files: Sequence[str], sizes: Sequence[int]) -> None:
        self.root = root
        self.files = list(files)
        self.sizes = list(sizes)

    def name(self, shard: int) -> str:
        """The shard's path or URL, as messages name it (a URL without credentials)."""
        return f"{safe_url(self.root).rstrip('/')}/{self.files[shard]}"

    #: Whether :meth:`read` copies into memory the caller provides (else ``into`` is not needed).
    copies = True

    def read(self, shard: int, offset: int, length: int, into: memoryview | None = None) -> memoryview:
        """``length`` bytes of ``shard`` from ``offset``, as a view: of ``into`` (the caller's
        reused memory, at least ``length`` bytes) where the store copies, of the store's own
        memory where it does not (a memory map, or bytes its library hands over anyway).

        Views of the store's own memory stay valid for as long as they are referenced.
        """
        raise NotImplementedError

    def read_many(self, reads: Sequence[tuple[int, int, int, memoryview | None]]) -> list[memoryview]:
        """:meth:`read` of each ``(shard, offset, length, into)``; stores that can have several
        requests in flight (object stores) send them at once."""
        return [self.read(shard, offset, length, into) for shard, offset, length, into in reads]

    def close(self) -> None:
        pass

    def _size_mismatch(self, shard: int, actual: int) -> OutputError:
        return OutputError(
            f"{self.name(shard)}: has {actual} bytes, the manifest says {self.sizes[shard]}: "
            "the shard is truncated or was replaced; convert again"
        )


class LocalRangeReader(RangeReader):
    """Local shards, memory-mapped: a read is a view of the page cache, so fetching a sample
    copies nothing, and the decode threads read their samples' bytes in parallel.

    A shard's size is checked against the manifest when it is mapped. A shard truncated later,
    while mapped, makes the process fail with SIGBUS when it reads past the new end: loud, but
    not an error message; the manifest check catches it when the next job opens the shard.
    """

    coalesce_gap = LOCAL_COALESCE_GAP
    copies = False
    max_open = 64  # shards kept mapped at once; a global shuffle may touch every shard per batch

    def __init__(self, root: str, files: Sequence[str], sizes: Sequence[int]) -> None:
        super().__init__(root, files, sizes)
        self._maps: dict[int, memoryview] = {}

    def _map(self, shard: int) -> memoryview:
        view = self._maps.get(shard)
        if view is None:
            path = self.name(shard)
            try:
                with open(path, "rb") as file:
                    size = os.fstat(file.fileno()).st_size
                    if size != self.sizes[shard]:
                        raise self._size_mismatch(shard, size)
                    view = memoryview(mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ))
            except FileNotFoundError:
                raise OutputError(f"{path}: shard is missing; convert again or fix the path") from None
            except (OSError, ValueError) as exc:
                raise OutputError(f"{path}: cannot map shard ({exc})") from exc
            if len(self._maps) >= self.max_open:  # unmapped once no view of it is left
                del self._maps[next(iter(self._maps))]
            self._maps[shard] = view
        return view

    def read(self, shard: int, offset: int, length: int, into: memoryview | None = None) -> memoryview:
        view = self._map(shard)
        if offset + length > len(view):
            raise OutputError(f"{self.name(shard)}: ends before byte {offset + length}; the shard is truncated")
        return view[offset : offset + length]

    def close(self) -> None:
        self._maps.clear()


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
            except BaseException:
                self.close()  # a connection in an unknown state is never reused
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
            if response.status != 206:
                self.close()  # drops whatever body came (a server ignoring Range sends the whole shard)
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
                self.close()
                raise self._size_mismatch(shard, int(total))
            done = 0
            while done < length:
                n = response.readinto(into[done:])
                if not n:
                    break
                done += n
            response.read()
            if done != length:  # the body ended early: the connection broke, or the shard is short
                self.close()
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

    def _call(self, where: str, missing: str, read: Callable[[], T]) -> T:
        """``read()`` retried while it fails transiently; not found and refused are one-line errors."""
        try:
            return retrying(where, read)
        except SSMSpineError:
            raise
        except Exception as exc:  # noqa: BLE001 - a library's error becomes one line naming the object
            if isinstance(exc, FileNotFoundError) or has_status(exc, 404, 410):
                raise OutputError(f"{where}: {missing}") from None
            if isinstance(exc, PermissionError) or has_status(exc, 401, 403):
                raise OutputError(f"{where}: access denied ({reason(exc)})") from exc
            raise OutputError(f"{where}: cannot be read ({reason(exc)})") from exc

    def fetch(self, relative: str) -> bytes:
        where = f"{safe_url(self.root.rstrip('/'))}/{relative}"
        return self._call(where, "not found", lambda: self._fs.cat_file(f"{self._path.rstrip('/')}/{relative}"))

    copies = False  # fsspec hands over fresh bytes

    def _shard_path(self, shard: int) -> str:
        path = f"{self._path.rstrip('/')}/{self.files[shard]}"
        if shard not in self._checked:
            size = self._call(self.name(shard), "shard is missing", lambda: self._fs.size(path))
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
        data = self._call(where, "shard is missing", lambda: self._fs.cat_file(path, start=offset, end=offset + length))
        return self._checked_length(shard, offset, length, data)


def range_reader_class(root: str) -> type[RangeReader]:
    if not is_url(root):
        return LocalRangeReader
    if root.split("://", 1)[0].lower() in ("http", "https"):
        return HttpRangeReader
    return FsspecRangeReader


def open_range_reader(
    root: str, files: Sequence[str], sizes: Sequence[int], storage_options: Mapping | None = None
) -> RangeReader:
    """The reader of shards ``files`` (of ``sizes`` bytes, as the manifest says) of the output at
    ``root``; with ``storage_options``, any URL (``http(s)://`` too) is read through fsspec."""
    if storage_options and is_url(root):
        return FsspecRangeReader(root, files, sizes, storage_options)
    return range_reader_class(root)(root, files, sizes)


def read_stream_manifest(root: str, storage_options: Mapping | None = None) -> manifest.Manifest:
    """The manifest of the output at a local directory or URL, checked for format and version.

    With ``storage_options``, any URL (``http(s)://`` too) is read through fsspec, which takes them.
    """
    if not is_url(root):
        return manifest.read_manifest(root)
    store = open_range_reader(root, [], [], storage_options)
    try:
        data = store.fetch(manifest.MANIFEST_NAME)  # type: ignore[attr-defined]
    finally:
        store.close()
    return manifest.parse_manifest(data, f"{safe_url(root).rstrip('/')}/{manifest.MANIFEST_NAME}")
