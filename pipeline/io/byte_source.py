"""One file's or object's bytes, read by ranges: a local file (``pread``) or an object at a URL (fsspec).

Both the Zarr fast path (one shard a chunk at a time) and a source archive at a URL (its directory,
then one member at a time) read this way; they differ only in the error a lasting failure becomes,
which each caller chooses (``failure``).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, TypeVar

from pipeline.retry import refusal, retried
from pipeline.storage import url_filesystem
from pipeline.urls import safe_url

T = TypeVar("T")
#: What a lasting remote failure becomes: the caller's error, given the reason as one plain line.
Failure = Callable[[str], Exception]


class ByteSource:
    """One file's or object's bytes: its size, ranges of it, and a name without secrets."""

    name: str

    def size(self) -> int:
        raise NotImplementedError

    def read(self, offset: int, length: int) -> bytes:
        """Bytes ``offset`` to ``offset + length``; fewer only where the file ends first."""
        raise NotImplementedError

    def read_into(self, offset: int, into: memoryview) -> int:
        """Read ``len(into)`` bytes from ``offset`` into the caller's buffer; the count read."""
        data = self.read(offset, len(into))
        into[: len(data)] = data
        return len(data)

    def close(self) -> None:
        pass


class LocalFile(ByteSource):
    """A local file, open unbuffered; reads are ``pread`` s, so threads share it."""

    def __init__(self, path: str) -> None:
        self.name = path
        self._file = open(path, "rb", buffering=0)  # FileNotFoundError for the caller to name

    def size(self) -> int:
        return os.fstat(self._file.fileno()).st_size

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self._file.fileno(), length, offset)

    def read_into(self, offset: int, into: memoryview) -> int:
        return os.preadv(self._file.fileno(), [into], offset)

    def close(self) -> None:
        self._file.close()


class RemoteObject(ByteSource):
    """An object at a URL, read by ranges through fsspec, each request retried while failures pass.

    A lasting failure becomes ``failure(reason)``; with ``missing_passes``, a missing object
    (``FileNotFoundError``) passes to the caller instead, for one who knows what it means there.
    Holds no connection of its own.
    """

    def __init__(
        self,
        url: str,
        failure: Failure,
        storage_options: Mapping[str, Any] | None = None,
        missing_passes: bool = False,
    ) -> None:
        self.url, self.name = url, safe_url(url)
        self._failure, self._passes = failure, (FileNotFoundError,) if missing_passes else ()
        self._fs, self._path = url_filesystem(url, storage_options)

    def info(self) -> dict:
        """fsspec's record of the object (type, size, ...)."""
        return self._call("", lambda: self._fs.info(self._path))

    def size(self) -> int:
        return int(self._call("", lambda: self._fs.size(self._path)))

    def read(self, offset: int, length: int) -> bytes:
        end = offset + length
        return self._call(f" (bytes {offset}-{end - 1})", lambda: self._fs.cat_file(self._path, start=offset, end=end))

    def _call(self, what: str, read: Callable[[], T]) -> T:
        def failed(error: Exception) -> Exception:
            return self._failure(refusal(error, self._path, failed="cannot be read"))

        return retried(f"{self.name}{what}", read, failed, passes=self._passes)
