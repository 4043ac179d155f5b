"""Shards at URLs read from a local copy once they have one: a range reader over another, with a shard cache.

Streaming from ``s3://`` or ``https://`` reads every byte range from the bucket every epoch.
:class:`CachedRangeReader` sits in front of the stream's store (one output's, or a mixture's): the
first time a shard at a URL is read, it is read by ranges as before, and one background fill copies
it whole into the machine's :class:`~pipeline.io.shard_cache.ShardCache`; from then on it is
memory-mapped from there, as a local output is. Reads never wait for a fill (epoch 1 runs at the
remote rate, not slower); a shard that does not fit (the limit, a full disk) or whose fill fails is
read by ranges, as without a cache.

Why a fill per shard and not the ranges as they are read: a global shuffle reads every shard a
little at a time, so a shard's ranges would be complete only at the end of the epoch; a whole
shard is also what the cache checks against the manifest (size and sha256) before anyone uses it.

Each process opens its own cache and fill threads, lazily, with its store (the cache's locks are
not picklable and threads do not cross a fork); what crosses is :class:`CacheOptions`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import weakref
from typing import Any, BinaryIO, Iterable, Mapping, NamedTuple, Sequence

from pipeline.errors import OutputError, UsageError
from pipeline.io.byte_source import RemoteObject
from pipeline.io.folder import RemoteFolder
from pipeline.io.shard_cache import ShardCache, ShardChanged
from pipeline.store.range_readers import RangeRead, RangeReader
from pipeline.store.remote_ranges import SHARD_CALLS
from pipeline.urls import is_url

log = logging.getLogger(__name__)

#: Background fills per process: downloads are network-bound, and ranks and workers fill in parallel.
FILL_THREADS = 2
#: A fill reads its shard this many bytes per request (each retried on its own).
FILL_CHUNK = 8 << 20

#: This process's cached readers, for :func:`wait_for_fills`.
_READERS: weakref.WeakSet[CachedRangeReader] = weakref.WeakSet()


class CacheOptions(NamedTuple):
    """Where the shard cache lives and the most it may hold (bytes): what a dataset keeps and hands to
    DataLoader workers, each of which opens the cache itself."""

    cache_dir: str
    limit_bytes: int

    @classmethod
    def of(
        cls, cache_dir: str | os.PathLike | None, cache_limit: int | None, roots: Iterable[str]
    ) -> CacheOptions | None:
        """The dataset's ``cache_dir=`` and ``cache_limit=`` checked (None without a cache): both or
        neither, and some output at a URL."""
        if cache_dir is None:
            if cache_limit is not None:
                raise UsageError("cache_limit= is the size of the shard cache: give cache_dir= with it")
            return None
        if cache_limit is None:
            raise UsageError("cache_dir= needs cache_limit=, the most bytes of shards the cache may hold")
        if not any(is_url(root) for root in roots):
            raise UsageError("cache_dir= is for outputs at URLs: a local output is read in place")
        ShardCache(cache_dir, cache_limit)  # checks both now, in the main process; each process opens its own
        return cls(os.path.abspath(cache_dir), cache_limit)


class CachedRangeReader(RangeReader):
    """``store``'s shards, those at URLs read from the shard cache once a fill has copied them there.

    ``roots[i]`` and ``sha256s[i]`` are shard ``i``'s output and checksum (the manifest's); shards of
    local outputs are left to ``store``. Copies held by this process are never evicted until :meth:`close`.
    """

    def __init__(
        self,
        store: RangeReader,
        roots: Sequence[str],
        sha256s: Sequence[str],
        options: CacheOptions,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(store.root, store.files, store.sizes)
        self.copies, self.coalesce_gap = store.copies, store.coalesce_gap
        self._store, self._storage_options = store, storage_options
        self._cache = ShardCache(options.cache_dir, options.limit_bytes)
        self._remote = {i: (root, sha256s[i]) for i, root in enumerate(roots) if is_url(root)}
        self._folders: dict[str, RemoteFolder] = {}
        self._maps: dict[int, memoryview] = {}  # shards read from their copy; set by fill threads too
        self._asked: set[int] = set()  # shards looked up in the cache (and filled where missing)
        self._changed: dict[int, ShardChanged] = {}  # shards whose download was not the manifest's
        self._fills: queue.Queue[int | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._pid = os.getpid()
        _READERS.add(self)

    def name(self, shard: int) -> str:
        return self._store.name(shard)

    def read(self, shard: int, offset: int, length: int, into: memoryview | None = None) -> memoryview:
        view = self._local(shard)
        if view is None:
            return self._store.read(shard, offset, length, into)
        return self.view(view, shard, offset, length)

    def read_many(self, reads: Sequence[RangeRead]) -> list[memoryview]:
        """Views of the copies where there are copies; the other reads go to the store, all at once."""
        local = [self._local(read.shard) for read in reads]
        remote = iter(self._store.read_many([read for read, view in zip(reads, local) if view is None]))
        return [
            next(remote) if view is None else self.view(view, read.shard, read.offset, read.length)
            for read, view in zip(reads, local)
        ]

    def wait_for_fills(self) -> None:
        """Until every fill started so far has ended (copied, found no room, or failed); in a forked
        child, whose threads did not come along, at once."""
        if os.getpid() == self._pid:
            self._fills.join()

    def close(self) -> None:
        """Drop the fills not yet started and let this process's copies be evicted again. A fill under
        way runs to its end (a daemon thread: a process exiting meanwhile leaves only a temporary file,
        which the cache removes). In a forked child, whose threads did not come along, nothing is touched."""
        if os.getpid() != self._pid or self._closed:
            return
        self._closed = True
        _READERS.discard(self)
        with contextlib.suppress(queue.Empty):
            while True:
                self._fills.get_nowait()
                self._fills.task_done()
        for _ in self._threads:
            self._fills.put(None)
        self._store.close()
        self._maps.clear()
        self._cache.release()

    def _local(self, shard: int) -> memoryview | None:
        """The map of the shard's copy; None where there is none (yet): the first time, look it up
        and start a fill where it is missing."""
        view = self._maps.get(shard)
        if shard in self._changed:  # found by a fill: reading on by ranges would read the changed object
            raise self._changed[shard]
        if view is not None or shard in self._asked:
            return view
        self._asked.add(shard)
        if shard not in self._remote:
            return None  # a local output's shard, in a mixture: its own store maps it
        path = self._cache.cached(self._remote[shard][1], self.sizes[shard])
        if path is not None:
            return self._map(shard, str(path))
        if self._closed:
            return None
        if not self._threads:
            self._threads = [threading.Thread(target=self._filling, daemon=True) for _ in range(FILL_THREADS)]
            for thread in self._threads:
                thread.start()
        self._fills.put(shard)
        return None

    def _map(self, shard: int, path: str) -> memoryview | None:
        """Map the copy at ``path`` (checked by the cache; its size again here) for reads from now on."""
        try:
            view = self._maps[shard] = self.mapped(shard, path)
        except (OSError, ValueError, OutputError) as error:
            log.warning("shard cache: %s: cannot map its copy %s (%s); read by ranges", self.name(shard), path, error)
            return None
        return view

    def _filling(self) -> None:
        """A fill thread: one shard after another, until :meth:`close` says stop."""
        while (shard := self._fills.get()) is not None:
            try:
                self._fill(shard)
            finally:
                self._fills.task_done()
        self._fills.task_done()

    def _fill(self, shard: int) -> None:
        (root, sha256), size = self._remote[shard], self.sizes[shard]
        try:
            folder = self._folders.setdefault(root, RemoteFolder(root, self._storage_options, SHARD_CALLS))
            source = folder.object(self.files[shard])
            path = self._cache.fill(sha256, size, self.name(shard), lambda file: download(source, size, file))
        except ShardChanged as error:
            self._changed[shard] = error
            return
        except Exception as error:  # the cache is a shortcut: the shard is still read by ranges
            log.warning("shard cache: %s not copied, read by ranges: %s", self.name(shard), error)
            return
        if path is not None and not self._closed:
            self._map(shard, str(path))


def download(source: RemoteObject, size: int, file: BinaryIO) -> None:
    """The object's ``size`` bytes into ``file``, :data:`FILL_CHUNK` bytes per request, each retried
    while failures pass (an object that ends early stops it: the cache names the shortfall)."""
    for offset in range(0, size, FILL_CHUNK):
        data = source.read(offset, min(FILL_CHUNK, size - offset))
        file.write(data)
        if len(data) < min(FILL_CHUNK, size - offset):
            return


def wait_for_fills() -> None:
    """Until every fill this process's cached readers have started has ended: after a first epoch,
    before a second that must read only copies (tests, benchmarks)."""
    for reader in list(_READERS):
        reader.wait_for_fills()
