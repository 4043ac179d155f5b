"""Where the bytes of a converted output come from: ranged reads of its tar shards, and its manifest.

The manifest records the byte range of every field of every sample in its tar, so a sample is
fetched by ranged reads of only the fields asked for — which is what makes a global shuffle
cheap. One store per process, opened lazily, chosen by :func:`_store_class` from the root:

* a local path: ``os.preadv`` into one reused buffer, a bounded number of shards kept open;
* ``http(s)://``: ``Range`` GETs on one kept-alive connection, standard library only;
* any other fsspec URL (``file://``, ``s3://``, ``memory://``, ...): ``cat_file`` ranges.

Every store checks a shard's size against the manifest before trusting its offsets. Adjacent
fields of a sample (at most ``coalesce_gap`` bytes apart) are fetched with one read.
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.parse
from typing import Mapping, Sequence

from .. import manifest
from ..schema import OutputError

#: Requested fields of one sample separated by at most this many bytes are read with one request.
LOCAL_COALESCE_GAP = 64 << 10
REMOTE_COALESCE_GAP = 1 << 20


class _Store:
    """Ranged reads of the shards of one output; one per process, opened lazily."""

    coalesce_gap = REMOTE_COALESCE_GAP

    def __init__(self, root: str, files: Sequence[str], sizes: Sequence[int]) -> None:
        self.root = root
        self.files = list(files)
        self.sizes = list(sizes)
        self._buffer = bytearray()

    def name(self, shard: int) -> str:
        return f"{self.root.rstrip('/')}/{self.files[shard]}"

    def buffer(self, length: int) -> memoryview:
        if len(self._buffer) < length:
            self._buffer = bytearray(max(length, 2 * len(self._buffer)))
        return memoryview(self._buffer)[:length]

    def read(self, shard: int, offset: int, length: int) -> memoryview:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def _size_mismatch(self, shard: int, actual: int) -> OutputError:
        return OutputError(f"{self.name(shard)}: has {actual} bytes, the manifest says {self.sizes[shard]}: "
                           "the shard is truncated or was replaced; convert again")  # fmt: skip


class _LocalStore(_Store):
    coalesce_gap = LOCAL_COALESCE_GAP
    max_open = 64  # shards kept open at once; a global shuffle may touch every shard per batch

    def __init__(self, root: str, files: Sequence[str], sizes: Sequence[int]) -> None:
        super().__init__(root, files, sizes)
        self._fds: dict[int, int] = {}

    def _fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is None:
            path = self.name(shard)
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                raise OutputError(f"{path}: shard is missing; convert again or fix the path") from None
            except OSError as exc:
                raise OutputError(f"{path}: cannot open shard ({exc})") from exc
            size = os.fstat(fd).st_size
            if size != self.sizes[shard]:
                os.close(fd)
                raise self._size_mismatch(shard, size)
            if len(self._fds) >= self.max_open:
                os.close(self._fds.pop(next(iter(self._fds))))
            self._fds[shard] = fd
        return fd

    def read(self, shard: int, offset: int, length: int) -> memoryview:
        view = self.buffer(length)
        fd = self._fd(shard)
        done = 0
        while done < length:
            n = os.preadv(fd, [view[done:]], offset + done)
            if n == 0:
                raise OutputError(f"{self.name(shard)}: ends before byte {offset + length}; the shard is truncated")
            done += n
        return view

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class _HttpStore(_Store):
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

    def _get(self, path: str, headers: Mapping[str, str]) -> http.client.HTTPResponse:
        for attempt in (0, 1):  # a kept-alive connection the server closed fails once; reconnect
            try:
                conn = self._connection()
                conn.request("GET", path, headers=dict(headers))
                return conn.getresponse()
            except (http.client.HTTPException, OSError) as exc:
                self.close()
                if attempt:
                    raise OutputError(f"{self.root}{path}: request failed ({exc})") from exc
        raise AssertionError("unreachable")

    def fetch(self, relative: str) -> bytes:
        """A whole small file (the manifest)."""
        path = self._url.path.rstrip("/") + "/" + relative
        response = self._get(path, {})
        data = response.read()
        if response.status != 200:
            raise OutputError(f"{self.root.rstrip('/')}/{relative}: HTTP {response.status} {response.reason}")
        return data

    def read(self, shard: int, offset: int, length: int) -> memoryview:
        name = self.name(shard)
        path = self._url.path.rstrip("/") + "/" + self.files[shard]
        response = self._get(path, {"Range": f"bytes={offset}-{offset + length - 1}"})
        if response.status != 206:
            self.close()  # drops whatever body came (a server ignoring Range sends the whole shard)
            if response.status == 404:
                raise OutputError(f"{name}: shard is missing (HTTP 404)")
            if response.status == 416:
                raise OutputError(f"{name}: ends before byte {offset + length}; the shard is truncated (HTTP 416)")
            raise OutputError(f"{name}: HTTP {response.status} {response.reason} to a Range request "
                              "(the server must support Range requests)")  # fmt: skip
        total = response.getheader("Content-Range", "").rpartition("/")[2]
        if total.isdigit() and int(total) != self.sizes[shard]:
            self.close()
            raise self._size_mismatch(shard, int(total))
        view = self.buffer(length)
        done = 0
        while done < length:
            n = response.readinto(view[done:])
            if not n:
                break
            done += n
        response.read()
        if done != length:
            self.close()
            raise OutputError(f"{name}: got {done} of {length} bytes at {offset}; the shard is truncated")
        return view

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class _FsspecStore(_Store):
    """Any other URL fsspec understands (``file://``, ``s3://``, ``memory://``, ...)."""

    def __init__(self, root: str, files: Sequence[str], sizes: Sequence[int]) -> None:
        super().__init__(root, files, sizes)
        import fsspec.core

        self._fs, self._path = fsspec.core.url_to_fs(root)
        self._checked: set[int] = set()

    def fetch(self, relative: str) -> bytes:
        try:
            return self._fs.cat_file(f"{self._path.rstrip('/')}/{relative}")
        except FileNotFoundError:
            raise OutputError(f"{self.root.rstrip('/')}/{relative}: not found") from None

    def read(self, shard: int, offset: int, length: int) -> memoryview:
        path = f"{self._path.rstrip('/')}/{self.files[shard]}"
        try:
            if shard not in self._checked:
                size = self._fs.size(path)
                if size != self.sizes[shard]:
                    raise self._size_mismatch(shard, size)
                self._checked.add(shard)
            data = self._fs.cat_file(path, start=offset, end=offset + length)
        except FileNotFoundError:
            raise OutputError(f"{self.name(shard)}: shard is missing") from None
        if len(data) != length:
            raise OutputError(f"{self.name(shard)}: got {len(data)} of {length} bytes at {offset}; truncated")
        return memoryview(data)


def _is_url(root: str) -> bool:
    return "://" in root


def _store_class(root: str) -> type[_Store]:
    if not _is_url(root):
        return _LocalStore
    if root.split("://", 1)[0].lower() in ("http", "https"):
        return _HttpStore
    return _FsspecStore


def read_stream_manifest(root: str) -> dict:
    """The manifest of the output at a local directory or URL, checked for format and version."""
    if not _is_url(root):
        return manifest.read_manifest(root)
    store = _store_class(root)(root, [], [])
    try:
        data = json.loads(store.fetch(manifest.MANIFEST_NAME))  # type: ignore[attr-defined]
    except json.JSONDecodeError as exc:
        raise OutputError(f"{root.rstrip('/')}/{manifest.MANIFEST_NAME}: not valid JSON ({exc})") from exc
    finally:
        store.close()
    if data.get("format") != manifest.FORMAT or data.get("format_version") != manifest.FORMAT_VERSION:
        raise OutputError(f"{root}: not an {manifest.FORMAT} v{manifest.FORMAT_VERSION} manifest")
    return data
