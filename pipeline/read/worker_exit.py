"""DataLoader workers that exit as soon as their loader shuts down, even when torch's word is lost.

torch ends a worker by setting the loader's *done event* and putting ``None`` on the worker's
index queue; the worker loop only looks at the event when something arrives on that queue. When
the loader's iterator is reclaimed by Python's cycle collector rather than by reference counting,
that ``None`` never arrives: the collector runs weak-reference callbacks before ``__del__``, so
multiprocessing's finalizers have stopped the feeder threads of the iterator's index queues by the
time its ``_shutdown_workers`` puts into them. The loader then waits ``MP_STATUS_CHECK_INTERVAL``
(5 s) for each worker before terminating it. An exception raised in a worker always leaves the
iterator to the cycle collector (torch re-raises it from a frame that keeps it in a local: a cycle
through the traceback, whose frames hold the iterator), so a caller who catches one (a test, a
retry loop, a notebook) paid seconds per worker at the next collection.

So a worker reading for our datasets watches the done event itself, on a daemon thread that looks
every :data:`POLL_SECONDS`, and once it is set puts the ``None`` on the worker's own index queue:
the worker loop then ends as torch meant it to. The thread polls rather than blocking in
``Event.wait``: a waiter that died (killed for memory, say) would make the loader's ``Event.set``
wait for it forever. (Each look takes the event's lock for a moment, as torch's own worker loop
does at every index it reads: a worker killed inside that moment can still leave it taken.)
torch hands neither the event nor the queue to the dataset; they are the arguments its worker
process was started with (private to torch), and where they cannot be found, workers behave as
before.

Kept, and on by default (issue 18 asked: delete, or make opt-in). The benefit, measured: 5 s per
worker after every error raised in a worker (``tests/test_loader_batching.py`` took 26 s without it,
12 s with it), paid by whoever catches errors and goes on: tests, retry loops, notebooks. The risk is
bounded: one sleeping daemon thread per worker, and two names of torch's private worker arguments,
bound by signature. If a torch upgrade renames them, nothing breaks (workers exit as torch has them)
and two tests fail: ``test_torchs_worker_loop_still_takes_the_arguments_we_watch`` directly, and
``test_workers_exit_on_their_own_...`` by the workers' exit codes. Opt-in would leave the 5 s to
every user who has not read this.
"""

from __future__ import annotations

import inspect
import logging
import multiprocessing
import os
import threading
import time
from typing import Any

from torch.utils.data import get_worker_info

log = logging.getLogger(__name__)

#: How often the watching thread looks at the done event: what a shutdown waits for an idle worker
#: at most (a worker still decoding a batch ends it first).
POLL_SECONDS = 0.1

#: The process whose worker is watched already (a forked child starts unwatched).
_watched_pid = 0


def exit_with_the_loader() -> None:
    """In a DataLoader worker process, make sure (once per process) that it exits promptly when
    its loader shuts down; elsewhere, nothing. Cheap enough to call on every read."""
    global _watched_pid
    if _watched_pid == os.getpid() or get_worker_info() is None:
        return
    _watched_pid = os.getpid()
    channels = _worker_channels()
    if channels is None:
        log.debug("torch's DataLoader worker arguments not found: workers exit as torch's loop has them")
        return
    threading.Thread(target=_end_with_the_loader, args=channels, name="ssmspine-loader-done", daemon=True).start()


def _worker_channels() -> tuple[Any, Any] | None:
    """The done event and the index queue this worker process was started with, or None."""
    try:
        from torch.utils.data._utils.worker import _worker_loop
    except ImportError:  # pragma: no cover
        return None
    process = multiprocessing.current_process()
    if getattr(process, "_target", None) is not _worker_loop:  # a thread worker, or not torch's loop
        return None
    try:
        given = inspect.signature(_worker_loop).bind(*process._args, **process._kwargs).arguments
        return given["done_event"], given["index_queue"]
    except (AttributeError, KeyError, TypeError):
        return None


def _end_with_the_loader(done_event: Any, index_queue: Any) -> None:
    """Once the loader is done, hand the worker loop the ``None`` that ends it (a second one, when
    torch's own arrived too, is never read)."""
    while not done_event.is_set():
        time.sleep(POLL_SECONDS)
    try:
        index_queue.cancel_join_thread()  # the worker exits once it reads it: never wait to flush
        index_queue.put(None)
    except (OSError, RuntimeError, ValueError):  # the worker is exiting already
        pass
