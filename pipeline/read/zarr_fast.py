"""The Zarr fast path: one ranged read and one Blosc decode per chunk, each shard's index read once per process.

A plain zarr-python ``array[i]`` spends about a millisecond per call in its async machinery,
metadata handling and a fresh read of the shard index — several times what it costs to decode one
sample's chunk. Shards are local files (``pread``) or objects at a URL (fsspec ``cat_file`` of
byte ranges: the index at the end of the shard once, then one request per chunk). File handles,
filesystems and shard indexes live in a per-process state that is rebuilt when ``os.getpid()``
changes and is never pickled, and that decode threads may share.
"""

from __future__ import annotations

import collections
import os
import threading
from typing import Mapping

import numpy as np
import zarr

from pipeline.errors import OutputError
from pipeline.io.byte_source import ByteSource, LocalFile, RemoteObject
from pipeline.io.remote_calls import RemoteCalls
from pipeline.read.batch_memory.memory import Specs
from pipeline.read.batch_memory.pool import SlotPool, slot_pool_for
from pipeline.read.worker_exit import exit_with_the_loader
from pipeline.store.codecs import decode_into
from pipeline.store.zarr_fast_layout import ChunkLayout
from pipeline.store.zarr_store import EMPTY_CHUNK, parse_shard_index, shard_index_span
from pipeline.urls import safe_url

#: Open shard files kept per process: bounded, so thousands of shards stay under the fd limit.
MAX_OPEN_FILES = 64


#: A Zarr shard's lasting failures: one line naming it; a missing one passes, for the caller to tell
#: a shard never written (no index) from one gone since (an error).
SHARD_CALLS = RemoteCalls(missing_passes=True)


def remote_shard(path: str, storage_options: Mapping) -> RemoteObject:
    """The shard at URL ``path``, read through :mod:`pipeline.io` with :data:`SHARD_CALLS`."""
    return RemoteObject.at(path, SHARD_CALLS, storage_options)


class ProcessState:
    """Open shards, decoded shard indexes, zarr-python arrays and the batch slots of one
    process (shared memory in a DataLoader worker, private memory in the main process).

    Shards (plain unbuffered files, or fsspec paths for URLs) are kept in a small LRU: evicting
    one only drops the cache's reference, so a thread still reading from it keeps it open until
    it is done. fsspec filesystems are made in the process that reads (fsspec keeps one per
    process), with the dataset's ``storage_options``. Made in a DataLoader worker, it sees that
    the worker exits promptly when its loader shuts down (:mod:`pipeline.read.worker_exit`).
    """

    def __init__(self, storage_options: Mapping | None = None) -> None:
        exit_with_the_loader()
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.storage_options = dict(storage_options or {})
        self.files: collections.OrderedDict[str, ByteSource] = collections.OrderedDict()
        self.indexes: dict[str, np.ndarray | None] = {}
        self.arrays: dict[str, zarr.Array] = {}
        self.slots: SlotPool | None = None

    def slot_pool(self, specs: Specs, rows: int, shared: bool) -> SlotPool:
        """Slots for batches of up to ``rows`` samples (a larger batch replaces smaller slots):
        shared memory in a DataLoader worker, private memory in the main process."""
        self.slots = slot_pool_for(self.slots, specs, rows, shared)
        return self.slots

    def shard(self, layout: ChunkLayout, path: str) -> ByteSource:
        """Shard ``path`` of ``layout``: a local file kept open (a few, least recently used first
        out) or an object at a URL; FileNotFoundError for a local shard never written."""
        with self.lock:
            shard = self.files.get(path)
            if shard is not None:
                self.files.move_to_end(path)
                return shard
        shard = remote_shard(path, self.storage_options) if layout.remote else LocalFile(path)
        with self.lock:
            self.files[path] = shard
            while len(self.files) > MAX_OPEN_FILES:
                self.files.popitem(last=False)
        return shard

    def index(self, layout: ChunkLayout, path: str) -> np.ndarray | None:
        """The (offset, nbytes) pairs of the inner chunks of shard ``path``, read and checked once;
        None for a shard never written (zarr-python writes none whose chunks all equal the fill value)."""
        if path in self.indexes:
            return self.indexes[path]
        try:
            shard = self.shard(layout, path)
            size = shard.size()
        except FileNotFoundError:
            index = None
        else:
            name = safe_url(path) if layout.remote else path
            start, n = shard_index_span(size, name, layout.shard_samples, layout.index_at_end, layout.index_crc)
            try:
                data = shard.read(start, n)
            except FileNotFoundError:  # an object at a URL deleted since its size was read
                raise OutputError(f"{name}: the shard is gone since its size was read") from None
            index = parse_shard_index(data, size, name, layout.shard_samples, layout.index_crc)
        self.indexes[path] = index
        return index


def read_fast(layout: ChunkLayout, state: ProcessState, row: int, out: np.ndarray | None = None) -> np.ndarray:
    """Sample ``row`` of a fast-path array: one ranged read and one decode into ``out`` (a
    C-contiguous array of the sample's shape and dtype), or into a new array."""
    if out is None:
        out = np.empty(layout.sample_shape, dtype=layout.dtype)
    shard, within = divmod(row, layout.shard_samples)
    path = layout.shard_path(shard)
    index = state.index(layout, path)
    offset, nbytes = (EMPTY_CHUNK, EMPTY_CHUNK) if index is None else (int(v) for v in index[within])
    if offset == EMPTY_CHUNK and nbytes == EMPTY_CHUNK:
        np.copyto(out, layout.fill_value, casting="unsafe")  # what np.full does
        return out
    name = safe_url(path) if layout.remote else path  # for messages: no credentials of the URL
    try:
        source = state.shard(layout, path)
    except FileNotFoundError:
        raise OutputError(f"{name}: the shard is gone since its index was read") from None
    where = f"{name}: chunk {within}"
    expected = layout.sample_nbytes
    try:
        if not layout.blosc:
            got = source.read_into(offset, memoryview(out).cast("B")) if nbytes == expected else -1
            if got != expected:
                raise OutputError(f"{where} has {nbytes} bytes, expected {expected}")
            return out
        data = source.read(offset, nbytes)
    except FileNotFoundError:  # an object at a URL deleted since its index was read
        raise OutputError(f"{name}: the shard is gone since its index was read") from None
    return decode_into(data, out, where)
