"""DataLoader workers exit on their own when their loader shuts down, even when torch's word is lost.

An error raised in a worker leaves the DataLoader iterator in a reference cycle, so the cycle
collector shuts it down, after multiprocessing's finalizers have stopped its index queues: the
``None`` that tells a worker to exit never arrives, and the loader terminates each worker after a
5 s join timeout (see :mod:`pipeline.read.worker_exit`).
"""

from __future__ import annotations

import gc
import multiprocessing
import signal

import pytest
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from pipeline import StreamingDataset, ZarrDataset
from pipeline.errors import UsageError

FIELDS = ("label", "shape")


def _terminated_shows(worker_id: int) -> None:
    """torch's workers exit with status 0 when their loader terminates them: with the default
    action of SIGTERM, a worker that had to be terminated says so in its exit code."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _failing_loader(converted, reader: str) -> DataLoader:
    """A loader whose workers raise on the first batch: batches batched again (a usage error)."""
    if reader == "streaming":
        ds = StreamingDataset(converted, fields=FIELDS, batch_size=4, seed=0)
        return DataLoader(ds, batch_size=4, num_workers=2, worker_init_fn=_terminated_shows)
    ds = ZarrDataset(converted, fields=FIELDS)
    sampler = BatchSampler(SequentialSampler(ds), 5, False)
    return DataLoader(ds, sampler=sampler, batch_size=2, num_workers=2, worker_init_fn=_terminated_shows)


@pytest.mark.slow
@pytest.mark.parametrize("reader", ["streaming", "zarr"])
def test_workers_exit_on_their_own_when_the_iterator_of_a_failed_loop_is_collected(converted, reader):
    loader = _failing_loader(converted, reader)
    before = set(multiprocessing.active_children())
    iterator = iter(loader)
    workers = [p for p in multiprocessing.active_children() if p not in before]
    assert len(workers) == 2
    with pytest.raises(UsageError):
        next(iterator)
    del iterator
    gc.collect()  # the iterator is in a cycle with the error: collecting it shuts its workers down
    # joined (not None), and exited on their own (0), not terminated after the join timeout (-SIGTERM)
    assert [w.exitcode for w in workers] == [0, 0]


def test_torchs_worker_loop_still_takes_the_arguments_we_watch():
    """The one private thing :mod:`pipeline.read.worker_exit` relies on: the worker process's target is
    torch's ``_worker_loop``, started with a done event and an index queue under these names. When a torch
    upgrade changes that, this fails (and workers fall back to torch's own exit, 5 s each after an error)."""
    import inspect

    from torch.utils.data import _utils

    parameters = inspect.signature(_utils.worker._worker_loop).parameters
    assert {"done_event", "index_queue"} <= set(parameters)
