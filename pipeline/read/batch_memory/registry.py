"""The receiving side of batches in shared-memory slots: slots kept mapped per worker, and rebuilding a batch.

A slot's memory crosses to the receiving process once. Handing over shared memory costs a socket
round trip for its file descriptor and a fresh mapping, whose pages fault again when the receiver
reads the batch; so the receiver keeps the slots of a worker mapped (registered by slot id) for as
long as that worker lives, and says so in the slot's header. Later batches of that slot send only
its id. A worker's registered slots are dropped once the worker has exited (on Linux at once, by a
thread waiting on its pidfd; elsewhere when the next slot is registered), and forked children start
with none. See :mod:`pipeline.read.batch_memory.pool` for the sending side.
"""

from __future__ import annotations

import atexit
import os
import select
import threading
import weakref

import numpy as np
import torch

from pipeline.errors import UsageError
from pipeline.read.batch_memory.memory import FREE, MAPPED, STATE, BatchLayout, SlotMemory, header_words
from pipeline.read.items import batch_item


def _release(header: torch.Tensor) -> None:
    header[STATE] = FREE


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
    header_words(storage)[MAPPED] = 1


def _forget(pid: int) -> None:
    """Drop the slots of worker ``pid`` (with ``_MAPPED_LOCK`` held), saying so in their headers,
    so that a process that reused the pid sends its slots' memory again."""
    for slot_id in [k for k in _MAPPED_SLOTS if k[0] == pid]:
        header_words(_MAPPED_SLOTS.pop(slot_id))[MAPPED] = 0
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
    pad: list[bool],
) -> dict:
    inside_worker = os.getpid() == slot_id[0]  # a custom collate_fn pickled it: the slot is never handed back
    if storage is None:
        storage = _mapped(slot_id)
        if storage is None:
            raise UsageError(
                f"a batch in shared-memory slot {slot_id} arrived in a process that does not "
                "have that slot mapped; hand batches only from DataLoader workers to the "
                "process that iterates the DataLoader"
            )
    elif kept and not inside_worker:
        _keep_mapped(slot_id, storage)
    owner = SlotMemory(storage)
    base = np.asarray(owner)  # every view of it, and every tensor made from one, keeps ``owner`` alive
    tensors = {f: torch.from_numpy(a) for f, a in layout.arrays(base, rows).items()}
    if not inside_worker:
        weakref.finalize(owner, _release, header_words(storage))
    return batch_item(keys, pad, tensors)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_stop_forgetting)
