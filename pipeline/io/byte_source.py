"""One file's or object's bytes, read by ranges: a local file (``pread``) or an object at a URL (fsspec).

The Zarr fast path (one shard a chunk at a time), a source archive at a URL (its directory, then one
member at a time) and the stream's shards (a batch's ranges of many shards at once, :func:`read_many`)
read this way; they differ only in the error a lasting failure becomes, which each caller chooses
(:class:`~pipeline.io.remote_calls.RemoteCalls`).
"""

from __future__ import annotations

import mmap
import os
from dataclasses import replace
from typing import Any, Mapping, NamedTuple, Sequence

from pipeline.errors import UsageError
from pipeline.io.filesystems import url_filesystem
from pipeline.io.remote_calls import RemoteCalls, url_secrets
from pipeline.urls import safe_url


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

    def map(self) -> memoryview:
        """The whole file as a read-only view of the page cache: reading a range of it copies
        nothing. The map outlives :meth:`close` and is unmapped once no view of it is left.
        ``ValueError`` for an empty file (there is nothing to map)."""
        return memoryview(mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ))

    def close(self) -> None:
        self._file.close()


class RemoteObject(ByteSource):
    """An object on an fsspec file system (``path`` in ``fs``), read by ranges, each request retried
    while failures pass; a lasting failure is what ``calls`` makes of it (a missing object may pass
    to the caller as ``FileNotFoundError``). Holds no connection of its own."""

    def __init__(self, fs: Any, path: str, name: str, calls: RemoteCalls) -> None:
        self.fs, self.path, self.name, self.calls = fs, path, name, calls

    @classmethod
    def at(
        cls, url: str, calls: RemoteCalls = RemoteCalls(), storage_options: Mapping[str, Any] | None = None
    ) -> "RemoteObject":
        """The object at ``url`` (``storage_options`` go to fsspec); a URL fsspec cannot open is a
        :class:`~pipeline.errors.UsageError` now, not at the first read."""
        fs, path = url_filesystem(url, storage_options)
        return cls(fs, path, safe_url(url), replace(calls, secrets=calls.secrets + url_secrets(url)))

    def info(self) -> dict:
        """fsspec's record of the object (type, size, ...)."""
        return self.calls.run(self.name, lambda: self.fs.info(self.path), self.path)

    def size(self) -> int:
        return int(self.calls.run(self.name, lambda: self.fs.size(self.path), self.path))

    def read(self, offset: int, length: int) -> bytes:
        end = offset + length
        read = lambda: self.fs.cat_file(self.path, start=offset, end=end)  # noqa: E731
        return self.calls.run(self.name, read, self.path, f" (bytes {offset}-{end - 1})")

    def read_all(self) -> bytes:
        """The whole object (a small one: a manifest)."""
        return self.calls.run(self.name, lambda: self.fs.cat_file(self.path), self.path)


class ObjectRange(NamedTuple):
    """``length`` bytes of ``source`` from ``offset``: one read of :func:`read_many`."""

    source: RemoteObject
    offset: int
    length: int


def read_many(ranges: Sequence[ObjectRange], name: str) -> list[bytes]:
    """Many ranges of many objects of one file system with one ``cat_ranges``: object stores' file
    systems (s3fs, gcsfs, HTTP) send the requests concurrently, so a batch costs about one round
    trip, not one per range. When some fail transiently, only those are tried again (a batch sent
    again whole would risk as many new failures on a flaky network as it retries). A lasting failure
    is what the first object's ``calls`` make of it, under ``name`` (the batch's, for messages).

    Returns what each request got, which may be shorter (the object ends) or longer (a server
    that ignores ``Range``) than asked: the caller knows which is an error.
    """
    if not ranges:
        return []
    fs, calls = ranges[0].source.fs, ranges[0].source.calls
    if any(r.source.fs is not fs for r in ranges):
        raise UsageError("read_many: the ranges' objects are on different file systems; read each with its own")
    paths = [r.source.path for r in ranges]
    starts = [r.offset for r in ranges]
    ends = [r.offset + r.length for r in ranges]
    found: list = [None] * len(ranges)
    pending = list(range(len(ranges)))

    def attempt() -> list:
        nonlocal pending
        got = fs.cat_ranges(
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

    return calls.run(name, attempt)
