"""Where the Dask work runs: a local cluster sized to the machine, or an existing cluster."""

from __future__ import annotations

import contextlib
import importlib
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, TypeVar

from distributed import Client, LocalCluster, as_completed

from pipeline.errors import SSMSpineError
from pipeline.progress import progress_bar
from pipeline.runtime import available_cores

#: Tasks queued per worker: enough to keep it busy, few enough to stop soon after a failure.
IN_FLIGHT_PER_WORKER = 2

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)


def default_workers() -> int:
    """One single-threaded worker process per usable core: conversion is CPU-bound Python."""
    return available_cores()


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None) -> Iterator[Client]:
    """A client of the cluster at ``scheduler``, or of a new local cluster of ``workers`` processes.

    Workers of an existing cluster must see the source archives and the output directory at the
    same paths as this process (one machine, or a shared file system).
    """
    if scheduler:
        with Client(scheduler) as client:
            log.info("using the Dask cluster at %s (%d workers)", scheduler, len(client.scheduler_info()["workers"]))
            yield client
        return
    n = workers or default_workers()
    with local_cluster(n) as cluster, Client(cluster) as client:
        log.info("started a local Dask cluster of %d workers", n)
        yield client


def local_cluster(workers: int) -> LocalCluster:
    """``workers`` single-threaded worker processes on 127.0.0.1.

    The scheduler's web server takes a free port (``:0``): a fixed one would clash with any
    other Dask cluster on the machine.
    """
    return LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",
        silence_logs=logging.WARNING,
    )


@dataclass(frozen=True)
class ExpectedFailure:
    """A task's :class:`SSMSpineError` (bad input or output), returned rather than raised.

    A task that raises makes its Dask worker log ``Compute Failed`` with a traceback, on the
    worker's terminal or the user's cluster logs; an expected error is not a bug, so it travels
    back as a result and is raised in the client, where the CLI prints it as one line.
    """

    error: SSMSpineError


def _run_one(function: Callable[[T], R], task: T) -> R | ExpectedFailure:
    try:
        return function(task)
    except SSMSpineError as error:
        return ExpectedFailure(error)


def run_tasks(
    function: Callable[[T], R],
    tasks: Sequence[T],
    *,
    scheduler: str | None,
    workers: int | None,
    sizes: Sequence[int],
    size_of: Callable[[R], int],
    desc: str,
    progress: bool,
    preload: Sequence[str] = (),
) -> tuple[list[R], float]:
    """Run ``function`` over ``tasks`` on Dask, in completion order, with a progress bar.

    Returns the results and the seconds spent starting (or connecting to) the cluster, including
    each worker's import of ``function``'s module and of the ``preload`` modules (a second or two
    for torch): that is start-up, paid once per worker whatever the archive's size. Tasks are
    submitted a few per worker at a time. After the first failure no new task starts, the running
    ones finish (so no task is still writing when this returns), and the first exception propagates.
    """
    if not tasks:
        return [], 0.0
    started = time.perf_counter()
    with dask_client(scheduler, workers) as client:
        for module in (function.__module__, *preload):  # torch & co. load now, not in task one
            client.run(importlib.import_module, module)
        startup = time.perf_counter() - started
        queue = iter(tasks)
        running = as_completed()
        in_flight = IN_FLIGHT_PER_WORKER * max(1, len(client.scheduler_info()["workers"]))
        for task in itertools.islice(queue, in_flight):
            running.add(client.submit(_run_one, function, task, pure=False))
        results: list[R] = []
        failure: BaseException | None = None
        with progress_bar(sum(sizes), desc, progress) as bar:
            for future in running:
                try:
                    result = future.result()
                except Exception as exc:  # noqa: BLE001 - re-raised below, once the others are done
                    failure = failure or exc
                    continue
                if isinstance(result, ExpectedFailure):
                    failure = failure or result.error
                    continue
                results.append(result)
                bar.update(size_of(result))
                if failure is None and (task := next(queue, None)) is not None:
                    running.add(client.submit(_run_one, function, task, pure=False))
        if failure is not None:
            raise failure
    return results, startup
