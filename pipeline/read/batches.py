"""Batches in shared memory: how a DataLoader worker hands a batch to the main process without a copy.

Used by both readers: :class:`~pipeline.read.stream.StreamingDataset` (dataset-level batches) and
:meth:`ZarrDataset.__getitems__ <pipeline.read.zarr_dataset.ZarrDataset.__getitems__>`.

Fresh shared memory is expensive: it is never backed by transparent huge pages, so every 4 KiB
page faults on first touch (measured here: ~1.8 ms per MB, more than decoding the data). Each
worker therefore keeps a small pool of shared-memory *slots*, one batch each, and reuses a slot
once the process that received its batch has dropped every tensor of it. The receiving process
learns that from a finalizer on the object that owns the tensors' memory, and writes "free" into
the slot's header; the worker only ever writes into free slots. A batch that never leaves the
worker as one (a custom ``collate_fn`` stacked or dropped its samples) frees its slot when the
worker drops its last view of it; a tensor view that torch pickles on its own is copied into
fresh shared memory on the way (its storage is not the slot's), so that is safe too. The slots
are anonymous (file-descriptor) shared memory: nothing outlives the processes that map it.

A slot's memory crosses to the receiving process once. Handing over shared memory costs a
socket round trip for its file descriptor and a fresh mapping, whose pages fault again when
the receiver reads the batch; so the receiver keeps the slots of a worker mapped (registered
by slot id) for as long as that worker lives, and says so in the slot's header. Later batches
of that slot send only its id. A worker's registered slots are dropped once the worker has
exited (on Linux at once, by a thread waiting on its pidfd; elsewhere when the next slot is
registered), and forked children start with none.
"""

from __future__ import annotations

import atexit
import itertools
import math
import os
import select
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

_ALIGN = 64
_FREE, _BUSY = 0, 1
#: Header words (int64) of a slot: its state, and whether the receiving process keeps it mapped.
_STATE, _MAPPED = 0, 1
#: Slots a worker keeps for reuse; more batches in flight at once get one-off slots.
MAX_SLOTS = 6


@dataclass(frozen=True)
class BatchLayout:
    """Where each field of a batch lies in a slot: (field, offset, per-sample shape, numpy dtype)."""

    fields: tuple[tuple[str, int, tuple[int, ...], str], ...]
    batch_size: int
    nbytes: int

    @classmethod
    def of(cls, specs: Mapping[str, tuple[tuple[int, ...], np.dtype]], batch_size: int) -> "BatchLayout":
        offset, fields = _ALIGN, []  # the first _ALIGN bytes hold the header (the slot's state)
        for field, (shape, dtype) in specs.items():
            fields.append((field, offset, tuple(shape), np.dtype(dtype).str))
            offset += -(-batch_size * math.prod(shape) * np.dtype(dtype).itemsize // _ALIGN) * _ALIGN
        return cls(tuple(fields), batch_size, offset)

    def arrays(self, base: np.ndarray, rows: int) -> dict[str, np.ndarray]:
        """Field arrays of ``rows`` samples, as views of the uint8 array ``base`` of a slot."""
        out = {}
        for field, offset, shape, dtype in self.fields:
            dt = np.dtype(dtype)
            size = rows * math.prod(shape) * dt.itemsize
            out[field] = base[offset : offset + size].view(dt).reshape((rows, *shape))
        return out


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
        self.header = self.bytes[: _ALIGN // 8 * 8].view(np.int64)
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
            if slot.header[_STATE] == _FREE:
                break
        else:
            slot = _Slot(self.layout.nbytes, kept=len(self.slots) < MAX_SLOTS, shared=self.shared)
            if slot.kept:
                self.slots.append(slot)
        slot.header[_STATE] = _BUSY
        return slot

    def batch(self, rows: int, keys: list[str]) -> SharedBatch:
        """A free slot as a batch of ``rows`` samples, to be filled through its ``arrays``."""
        if rows > self.layout.batch_size:
            raise ValueError(f"a batch of {rows} samples does not fit slots of {self.layout.batch_size}")
        return SharedBatch(self.take(), self.layout, rows, keys)


class _Lease:
    """Whether a batch left the worker as one (then the receiving process frees its slot)."""

    __slots__ = ("shipped",)

    def __init__(self) -> None:
        self.shipped = False


def _release_unless_shipped(header: np.ndarray, lease: _Lease) -> None:
    if not lease.shipped:
        header[_STATE] = _FREE


class SharedBatch:
    """A batch in a slot, on its way out of a worker: unpickles as a plain dict of tensors.

    Deliberately not a Mapping, so the DataLoader's ``default_convert`` passes it through as is;
    ``keys()`` and ``batch[name]`` give a custom ``collate_fn`` in the worker read access
    (``dict(batch)`` works). The worker fills it through ``arrays``; every view of them keeps the
    slot taken, and once the last one is gone the slot is free again, unless the batch was
    pickled to another process, which then frees it.
    """

    def __init__(self, slot: _Slot, layout: BatchLayout, rows: int, keys: list[str]) -> None:
        self.slot, self.layout, self.rows, self.sample_keys = slot, layout, rows, keys
        self._lease = _Lease()
        owner = _SlotMemory(slot.storage)
        weakref.finalize(owner, _release_unless_shipped, slot.header, self._lease)
        self.arrays = layout.arrays(np.asarray(owner), rows)  # views of ``owner``: they keep it alive

    def tensors(self) -> dict[str, torch.Tensor]:
        """The fields as tensors sharing the worker's views (so they, too, keep the slot taken)."""
        return {f: torch.from_numpy(a) for f, a in self.arrays.items()}

    def __reduce__(self):
        self._lease.shipped = True
        slot = self.slot
        storage = None if slot.header[_MAPPED] else slot.storage  # the receiver has it already
        return rebuild_shared_batch, (slot.id, storage, slot.kept, self.layout, self.rows, self.sample_keys)

    def keys(self) -> list[str]:
        return ["__key__", *self.arrays]

    def __getitem__(self, key: str) -> Any:
        """Read access for a custom ``collate_fn`` in the worker."""
        if key == "__key__":
            return self.sample_keys
        return torch.from_numpy(self.arrays[key])


class _SlotMemory:
    """Owns a slot's memory for numpy and torch; its death frees the slot for reuse."""

    def __init__(self, storage: torch.UntypedStorage) -> None:
        self.storage = storage
        self.__array_interface__ = {
            "shape": (storage.nbytes(),),
            "typestr": "|u1",
            "data": (storage.data_ptr(), False),
            "version": 3,
        }


def _release(header: torch.Tensor) -> None:
    header[_STATE] = _FREE


#: In a receiving process: the slots it keeps mapped, by slot id ``(worker pid, number)``.
#: Batches may be unpickled on several threads at once (pin-memory threads of two loaders).
_MAPPED_SLOTS: dict[tuple[int, int], torch.UntypedStorage] = {}
_MAPPED_LOCK = threading.Lock()


#: Per worker pid, the thread that drops its slots once it has exited (Linux: it waits on a pidfd).
_WATCHERS: dict[int, threading.Thread] = {}


def _keep_mapped(slot_id: tuple[int, int], storage: torch.UntypedStorage) -> None:
    """Keep a worker's slot mapped here until the worker exits.

    Where the OS has pidfds (Linux), a small thread per worker drops its slots when it exits;
    elsewhere, exited workers' slots are dropped at the next registration.
    """
    with _MAPPED_LOCK:
        for pid in {p for p, _ in _MAPPED_SLOTS} - {slot_id[0]}:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                _forget(pid)
            except PermissionError:  # exists, owned by someone else (the pid was reused): keep
                pass
        _MAPPED_SLOTS[slot_id] = storage
        if slot_id[0] not in _WATCHERS:
            _watch(slot_id[0])
    _header(storage)[_MAPPED] = 1


def _header(storage: torch.UntypedStorage) -> torch.Tensor:
    """The header words of a slot, as a tensor over its memory (``_STATE``, ``_MAPPED``)."""
    return torch.empty(0, dtype=torch.int64).set_(storage, 0, (_ALIGN // 8,))


def _forget(pid: int) -> None:
    """Drop the slots of worker ``pid`` (with ``_MAPPED_LOCK`` held), saying so in their headers,
    so that a process that reused the pid sends its slots' memory again."""
    for slot_id in [k for k in _MAPPED_SLOTS if k[0] == pid]:
        _header(_MAPPED_SLOTS.pop(slot_id))[_MAPPED] = 0
    _WATCHERS.pop(pid, None)


def _watch(pid: int) -> None:
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfds here, or the worker is gone already
        return

    def wait_for_exit() -> None:
        try:
            select.select([pidfd], [], [])  # readable once the process has exited
        finally:
            os.close(pidfd)
        with _MAPPED_LOCK:
            if not _exiting:  # workers also exit while this interpreter shuts torch down: hands off
                _forget(pid)

    thread = threading.Thread(target=wait_for_exit, name=f"ssmspine-slots-{pid}", daemon=True)
    _WATCHERS[pid] = thread
    thread.start()


_exiting = False


def _stop_forgetting() -> None:
    """At exit, before torch and multiprocessing shut down (atexit runs this first): the
    watchers touch no more slots."""
    global _exiting
    with _MAPPED_LOCK:
        _exiting = True


def _after_fork_in_child() -> None:
    """A forked child has none of the parent's mappings to keep, nor its threads."""
    _MAPPED_SLOTS.clear()
    _WATCHERS.clear()


def _mapped(slot_id: tuple[int, int]) -> torch.UntypedStorage | None:
    with _MAPPED_LOCK:
        return _MAPPED_SLOTS.get(slot_id)


def rebuild_shared_batch(
    slot_id: tuple[int, int],
    storage: torch.UntypedStorage | None,
    kept: bool,
    layout: BatchLayout,
    rows: int,
    keys: list[str],
) -> dict:
    inside_worker = os.getpid() == slot_id[0]  # a custom collate_fn pickled it: the slot is never handed back
    if storage is None:
        storage = _mapped(slot_id)
        if storage is None:
            raise RuntimeError(
                f"a batch in shared-memory slot {slot_id} arrived in a process that does not "
                "have that slot mapped; hand batches only from DataLoader workers to the "
                "process that iterates the DataLoader"
            )
    elif kept and not inside_worker:
        _keep_mapped(slot_id, storage)
    owner = _SlotMemory(storage)
    base = np.asarray(owner)  # every view of it, and every tensor made from one, keeps ``owner`` alive
    tensors = {f: torch.from_numpy(a) for f, a in layout.arrays(base, rows).items()}
    if not inside_worker:
        weakref.finalize(owner, _release, _header(storage))
    return {"__key__": keys, **tensors}


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_stop_forgetting)
