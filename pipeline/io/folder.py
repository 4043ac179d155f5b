"""Objects under one URL on one fsspec file system: an output's files, or its shards.

An output at a URL is a root (``s3://bucket/datasets/ssmspine``) and names relative to it
(``wds/train-000000.tar``). :class:`RemoteFolder` opens the root's file system once per process
(it pickles without it: Dask tasks and DataLoader workers carry the folder, not a connection),
runs any operation on one of its objects through the one retry-and-error mapping
(:class:`~pipeline.io.remote_calls.RemoteCalls`), and hands out its objects as byte sources that
share the file system, so that :func:`~pipeline.io.byte_source.read_many` can read many of them at once.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Mapping, TypeVar

from pipeline.io.byte_source import RemoteObject
from pipeline.io.filesystems import url_filesystem
from pipeline.io.remote_calls import RemoteCalls, url_secrets
from pipeline.urls import safe_url

T = TypeVar("T")


class RemoteFolder:
    """The objects under ``root``; ``calls`` says what their lasting failures become (the secrets of
    ``root`` are always taken out of the messages)."""

    def __init__(
        self, root: str, storage_options: Mapping[str, Any] | None = None, calls: RemoteCalls = RemoteCalls()
    ) -> None:
        self.root = root.rstrip("/")
        self.name = safe_url(self.root)
        self.storage_options = dict(storage_options or {})
        self.calls = replace(calls, secrets=calls.secrets + url_secrets(self.root))
        self._fs: Any = None
        self._path = ""

    def __getstate__(self) -> dict:  # the file system is rebuilt in the process the folder arrives in
        return {**self.__dict__, "_fs": None}

    @property
    def fs(self) -> Any:
        """The root's fsspec file system, made on first use in each process (a
        :class:`~pipeline.errors.UsageError` for a URL fsspec cannot open)."""
        if self._fs is None:
            self._fs, path = url_filesystem(self.root, self.storage_options)
            self._path = path.rstrip("/")
        return self._fs

    def key(self, relative: str) -> str:
        """``relative``'s path in the file system."""
        self.fs  # noqa: B018 - sets self._path
        return f"{self._path}/{relative}" if relative else self._path

    def name_of(self, relative: str) -> str:
        """``relative``'s URL, as messages name it (without secrets)."""
        return f"{self.name}/{relative}" if relative else self.name

    def call(self, relative: str, operation: Callable[[Any, str], T], calls: RemoteCalls | None = None) -> T:
        """``operation(fs, key)`` on the object ``relative``, through the folder's mapping (or ``calls``)."""
        key = self.key(relative)
        return self._calls(calls).run(self.name_of(relative), lambda: operation(self.fs, key), key)

    def object(self, relative: str, calls: RemoteCalls | None = None) -> RemoteObject:
        """The object ``relative`` as a byte source on the folder's file system."""
        return RemoteObject(self.fs, self.key(relative), self.name_of(relative), self._calls(calls))

    def _calls(self, calls: RemoteCalls | None) -> RemoteCalls:
        return self.calls if calls is None else replace(calls, secrets=calls.secrets + self.calls.secrets)
