"""Batches in shared memory: how a DataLoader worker hands a batch to the main process without a copy.

Used by both readers: :class:`~pipeline.read.stream.StreamingDataset` (dataset-level batches) and
:meth:`ZarrDataset.__getitems__ <pipeline.read.zarr_dataset.ZarrDataset.__getitems__>`.

A worker reuses a slot once the receiving process has dropped every tensor of its batch (why
slots at all: :mod:`pipeline.read.batch_memory`). The receiving process learns that from a
finalizer on the object that owns the tensors' memory, and writes "free" into the slot's header;
the worker only ever writes into free slots. A batch that never leaves the worker as one (a custom
``collate_fn`` stacked or dropped its samples) frees its slot when the worker drops its last view
of it; a tensor view that torch pickles on its own is copied into fresh shared memory on the way
(its storage is not the slot's), so that is safe too. The slots are anonymous (file-descriptor)
shared memory: nothing outlives the processes that map it.

The receiving side (slots kept mapped per worker, rebuilding a batch) is :mod:`.registry`; a slot's
header, layout and memory owner, :mod:`.memory`.
"""

from __future__ import annotations

import itertools
import os
import weakref
from typing import Any

import numpy as np
import torch

from pipeline.errors import UsageError
from pipeline.read.batch_memory.memory import ALIGN, BUSY, FREE, MAPPED, STATE, BatchLayout, SlotMemory, Specs
from pipeline.read.batch_memory.registry import rebuild_shared_batch
from pipeline.read.items import KEY, PAD, batch_item, item_names

#: Slots a worker keeps for reuse; more batches in flight at once get one-off slots.
MAX_SLOTS = 6


def _shared_storage(nbytes: int) -> torch.UntypedStorage:
    try:
        return torch.UntypedStorage._new_shared(nbytes)
    except (AttributeError, RuntimeError):  # private API; the public one copies, but works
        return torch.empty(nbytes, dtype=torch.uint8).share_memory_().untyped_storage()


class _Slot:
    """``kept``: a slot of the pool, reused; else a one-off slot that the receiver must not keep.
    ``shared``: shared memory, for batches that leave the process; else private memory."""

    _numbers = itertools.count()

    def __init__(self, nbytes: int, kept: bool, shared: bool = True) -> None:
        self.storage = _shared_storage(nbytes) if shared else torch.empty(nbytes, dtype=torch.uint8).untyped_storage()
        self.bytes = torch.empty(0, dtype=torch.uint8).set_(self.storage, 0, (nbytes,)).numpy()
        self.header = self.bytes[: ALIGN // 8 * 8].view(np.int64)
        self.kept = kept
        self.id = (os.getpid(), next(_Slot._numbers))


class SlotPool:
    """The slots of one process: shared memory in a DataLoader worker; private memory
    (``shared=False``) for a reader in the main process, which reuses them just the same, so
    that its batches land in memory that is mapped and warm rather than wherever the heap puts
    the next 24 MB (measured: 15-20 % of the reading time)."""

    def __init__(self, layout: BatchLayout, shared: bool = True) -> None:
        self.layout = layout
        self.shared = shared
        self.slots: list[_Slot] = []

    def take(self) -> _Slot:
        for slot in self.slots:
            if slot.header[STATE] == FREE:
                break
        else:
            slot = _Slot(self.layout.nbytes, kept=len(self.slots) < MAX_SLOTS, shared=self.shared)
            if slot.kept:
                self.slots.append(slot)
        slot.header[STATE] = BUSY
        return slot

    def batch(self, rows: int, keys: list[str], pad: list[bool]) -> SharedBatch:
        """A free slot as a batch of ``rows`` samples (``pad``: which only pad a rank's share), to
        be filled through its ``arrays``."""
        if rows > self.layout.batch_size:
            raise UsageError(f"a batch of {rows} samples does not fit slots of {self.layout.batch_size}")
        return SharedBatch(self.take(), self.layout, rows, keys, pad)


def slot_pool_for(
    pool: SlotPool | None,
    specs: Specs,
    rows: int,
    shared: bool,
    capacity: int = 0,
) -> SlotPool:
    """``pool`` if its slots hold batches of ``rows`` samples of these fields, shapes and dtypes,
    else a new pool with slots of ``max(rows, capacity)`` samples (a larger batch, or a transform
    whose results changed shape, replaces the slots; batches still held keep theirs alive)."""
    if pool is not None and pool.shared == shared and pool.layout.batch_size >= rows:
        if BatchLayout.of(specs, pool.layout.batch_size) == pool.layout:
            return pool
    return SlotPool(BatchLayout.of(specs, max(rows, capacity)), shared=shared)


class _Lease:
    """Whether a batch left the worker as one (then the receiving process frees its slot)."""

    __slots__ = ("shipped",)

    def __init__(self) -> None:
        self.shipped = False


def _release_unless_shipped(header: np.ndarray, lease: _Lease) -> None:
    if not lease.shipped:
        header[STATE] = FREE


class SharedBatch:
    """A batch in a slot, on its way out of a worker: unpickles as a plain dict of tensors.

    Deliberately not a Mapping, so the DataLoader's ``default_convert`` passes it through as is;
    ``keys()`` and ``batch[name]`` give a custom ``collate_fn`` in the worker read access
    (``dict(batch)`` works). The worker fills it through ``arrays``; every view of them keeps the
    slot taken, and once the last one is gone the slot is free again, unless the batch was
    pickled to another process, which then frees it.
    """

    def __init__(self, slot: _Slot, layout: BatchLayout, rows: int, keys: list[str], pad: list[bool]) -> None:
        self.slot, self.layout, self.rows, self.sample_keys, self.pad = slot, layout, rows, keys, pad
        self._lease = _Lease()
        owner = SlotMemory(slot.storage)
        weakref.finalize(owner, _release_unless_shipped, slot.header, self._lease)
        self.arrays = layout.arrays(np.asarray(owner), rows)  # views of ``owner``: they keep it alive

    def tensors(self) -> dict[str, torch.Tensor]:
        """The fields as tensors sharing the worker's views (so they, too, keep the slot taken)."""
        return {f: torch.from_numpy(a) for f, a in self.arrays.items()}

    def __reduce__(self):
        self._lease.shipped = True
        slot = self.slot
        storage = None if slot.header[MAPPED] else slot.storage  # the receiver has it already
        return rebuild_shared_batch, (slot.id, storage, slot.kept, self.layout, self.rows, self.sample_keys, self.pad)

    def keys(self) -> list[str]:
        return item_names(self.arrays)

    def __getitem__(self, key: str) -> Any:
        """Read access for a custom ``collate_fn`` in the worker: the batch's item, field by field."""
        if key in (KEY, PAD):
            return batch_item(self.sample_keys, self.pad, {})[key]
        return torch.from_numpy(self.arrays[key])
