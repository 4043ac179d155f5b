"""Source archives at URLs, read in place: the zip's directory and each member by ranged reads.

A release zip is 20 GB; converting it from object storage must not download it first. fsspec
reaches the object (``s3://``, ``http(s)://``, ``gs://``, ``file://``, ...) with credentials and
endpoints from the usual places: the environment (``AWS_ENDPOINT_URL``, ``AWS_PROFILE``, ...),
the libraries' config files, and fsspec's own (``FSSPEC_S3_...``, ``~/.config/fsspec``). Nothing
of them is passed around, recorded or printed.

:class:`RemoteArchive` is one object read through :mod:`pipeline.io`: its size (one metadata
request) and exact byte ranges, each read retried. :class:`RangedFile` is the seekable file
``zipfile`` reads the central directory from; it holds the archive's last :data:`TAIL_BYTES` in
memory, which cover the end records (zip64 ones included) and, for archives of a few hundred
members, the whole directory: opening an archive costs two requests, or three.
"""

from __future__ import annotations

import errno
import os
from typing import Any, Mapping

from pipeline.errors import SourceError, UsageError
from pipeline.io.byte_source import RemoteObject
from pipeline.io.remote_calls import RemoteCalls
from pipeline.urls import safe_url

#: The end of an archive read with its first request: the end records and usually the directory.
TAIL_BYTES = 64 << 10


def source_error(name: str, reason: str) -> SourceError:
    """A source's lasting failure: a :class:`SourceError` naming the archive (it prints the URL safely)."""
    return SourceError(name, None, reason)


#: How a source archive's reads fail: never a bad member, always the archive.
SOURCE_CALLS = RemoteCalls(failure=source_error)


class RemoteArchive:
    """One source object at a URL: its size, and exact byte ranges of it, each a retried request
    (a :class:`~pipeline.io.byte_source.RemoteObject` whose lasting failures name the archive)."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.url = url
        try:
            self._object = RemoteObject.at(url, SOURCE_CALLS, storage_options)
        except UsageError as exc:  # an unknown scheme, a missing package: about this source
            raise SourceError(url, None, str(exc).split(": ", 1)[1]) from exc
        info = self._object.info()
        if info.get("type") == "directory":
            raise SourceError(url, None, "is a folder: a source at a URL must be a zip archive (not an extracted tree)")
        if info.get("size") is None:
            raise SourceError(url, None, "the server does not tell its size, which reading it in ranges needs")
        self.size = int(info["size"])

    def read(self, offset: int, length: int) -> bytes:
        """Bytes ``offset`` to ``offset + length`` with one request, fewer where the archive ends first."""
        end = min(offset + length, self.size)
        if end <= offset:
            return b""
        data = self._object.read(offset, end - offset)
        if len(data) != end - offset:
            if len(data) > end - offset:
                why = f"the server sent {len(data)} bytes for a Range request of {end - offset}: it must support Range"
            else:
                why = f"got {len(data)} of {end - offset} bytes at {offset}: the object is shorter than it said"
            raise SourceError(self.url, None, why)
        return data

    def open(self) -> "RangedFile":
        return RangedFile(self)


class RangedFile:
    """The seekable, read-only file ``zipfile`` reads an archive at a URL through.

    The archive's tail is read once, on opening; any other read is one exact ranged request.
    """

    def __init__(self, archive: RemoteArchive) -> None:
        self.archive = archive
        self.name = safe_url(archive.url)  # zipfile names the file by it in its own messages
        self._tail_start = max(0, archive.size - TAIL_BYTES)
        self._tail = archive.read(self._tail_start, archive.size - self._tail_start)
        self._position = 0

    @property
    def size(self) -> int:
        return self.archive.size

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self.archive.size}[whence]
        if base + offset < 0:
            raise OSError(errno.EINVAL, f"{self.name}: seek before the start")
        self._position = base + offset
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        start = self._position
        end = self.archive.size if size is None or size < 0 else min(start + size, self.archive.size)
        if end <= start:
            return b""
        if start >= self._tail_start:
            data = self._tail[start - self._tail_start : end - self._tail_start]
        else:
            data = self.archive.read(start, end - start)
        self._position = start + len(data)
        return data

    def close(self) -> None:
        self._tail = b""
