"""The Zarr fast path: one ``pread`` and one Blosc decode per chunk, each shard's index read once per process.

A plain zarr-python ``array[i]`` spends about a millisecond per call in its async machinery,
metadata handling and a fresh read of the shard index — several times what it costs to decode one
sample's chunk. File handles and shard indexes live in a per-process state that is rebuilt when
``os.getpid()`` changes and is never pickled, and that decode threads may share.
"""

from __future__ import annotations

import collections
import os
import threading
from typing import Any, Mapping

import numpy as np
import zarr

from pipeline.errors import OutputError
from pipeline.read.batches import SlotPool, slot_pool_for
from pipeline.store.codecs import decode_into
from pipeline.store.zarr_layout import ChunkLayout
from pipeline.store.zarr_store import EMPTY_CHUNK, read_shard_index

#: Open shard files kept per process: bounded, so thousands of shards stay under the fd limit.
MAX_OPEN_FILES = 64


class ProcessState:
    """Open shard files, decoded shard indexes, zarr-python arrays and the batch slots of one
    process (shared memory in a DataLoader worker, private memory in the main process).

    Files are plain unbuffered file objects in a small LRU: evicting one only drops the
    cache's reference, so a thread still reading from it keeps it open until it is done.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.files: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self.indexes: dict[str, np.ndarray] = {}
        self.arrays: dict[str, zarr.Array] = {}
        self.slots: SlotPool | None = None

    def slot_pool(self, specs: Mapping[str, tuple[tuple[int, ...], np.dtype]], rows: int, shared: bool) -> SlotPool:
        """Slots for batches of up to ``rows`` samples (a larger batch replaces smaller slots):
        shared memory in a DataLoader worker, private memory in the main process."""
        self.slots = slot_pool_for(self.slots, specs, rows, shared)
        return self.slots

    def file(self, path: str):
        with self.lock:
            file = self.files.get(path)
            if file is not None:
                self.files.move_to_end(path)
                return file
        file = open(path, "rb", buffering=0)  # FileNotFoundError: a shard never written
        with self.lock:
            self.files[path] = file
            while len(self.files) > MAX_OPEN_FILES:
                self.files.popitem(last=False)
        return file

    def index(self, layout: ChunkLayout, path: str, file) -> np.ndarray:
        """The (offset, nbytes) pairs of a shard's inner chunks, read and checked once."""
        index = self.indexes.get(path)
        if index is None:
            index = read_shard_index(file.fileno(), path, layout.shard_samples, layout.index_at_end, layout.index_crc)
            self.indexes[path] = index
        return index


def read_fast(layout: ChunkLayout, state: ProcessState, row: int, out: np.ndarray | None = None) -> np.ndarray:
    """Sample ``row`` of a fast-path array: one ``pread`` and one decode into ``out`` (a
    C-contiguous array of the sample's shape and dtype), or into a new array."""
    if out is None:
        out = np.empty(layout.sample_shape, dtype=layout.dtype)
    shard, within = divmod(row, layout.shard_samples)
    path = layout.shard_path(shard)
    try:
        file = state.file(path)
    except FileNotFoundError:  # zarr-python writes no shard whose chunks all equal the fill value
        np.copyto(out, layout.fill_value, casting="unsafe")  # what np.full does
        return out
    offset, nbytes = (int(v) for v in state.index(layout, path, file)[within])
    if offset == EMPTY_CHUNK and nbytes == EMPTY_CHUNK:
        np.copyto(out, layout.fill_value, casting="unsafe")
        return out
    expected = layout.sample_nbytes
    if not layout.blosc:
        got = os.preadv(file.fileno(), [memoryview(out).cast("B")], offset) if nbytes == expected else -1
        if got != expected:
            raise OutputError(f"{path}: chunk {within} has {nbytes} bytes, expected {expected}")
        return out
    return decode_into(os.pread(file.fileno(), nbytes, offset), out, f"{path}: chunk {within}")
