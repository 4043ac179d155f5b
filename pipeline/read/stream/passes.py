"""One pass of a :class:`~pipeline.read.stream.StreamingDataset` in one DataLoader worker, and the
state torchdata's ``StatefulDataLoader`` keeps of it.

``StatefulDataLoader`` (torchdata; torchtitan's loader, on its way into torch as
``DataLoader(stateful=True)``) resumes a dataset that has ``state_dict``/``load_state_dict`` by
calling them **inside each DataLoader worker**: it saves every worker's state with the batches that
worker produced, and gives each new worker back its own state before the worker's first
``iter(dataset)``. The dataset's own protocol (a global position counted in the main process by
``track``) sees nothing there, so a worker answers with its own pass instead: the order fixes
which batches worker ``k`` of ``W`` on rank ``r`` yields (batch ``j`` of the rank's sequence goes to
worker ``j % W``, :func:`~pipeline.read.stream.order.worker_batches`), so the number of items a
worker has yielded is its position, exactly, whatever the DataLoader's batch size.

A worker's state therefore only resumes on the same rank of the same world size with the same
number of workers; anything else is a :class:`~pipeline.errors.UsageError` naming the protocol
that resumes anywhere (``pipeline.StreamingDataLoader`` or ``ds.track(loader)``).

Not exact, and not detectable here: ``StatefulDataLoader(in_order=False)``. Its snapshots of the
workers' states then disagree with what was handed over (a resumed epoch repeated and skipped
samples in our tests); torchdata gives no worker its ``in_order`` and logs a warning at every
``state_dict()``. ``StreamingDataLoader`` refuses ``in_order=False``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterator, Mapping

from torch.utils.data import get_worker_info

from pipeline.errors import UsageError
from pipeline.read.stream.state import OrderIdentity, check_identity

PASS_FORMAT = "ssmspine-stream-pass"
PASS_VERSION = 1
#: What to do instead, in every refusal of this module.
ANYWHERE = (
    "pipeline.StreamingDataLoader, or ds.track(loader) with ds.state_dict(), resume on any number of ranks and workers"
)


@dataclass(frozen=True)
class PassPlan:
    """What one worker's pass reads: the epoch, where in its global order the pass starts, and
    which share of it this worker takes."""

    epoch: int
    start: int
    rank: int
    world_size: int
    worker: int
    num_workers: int


@dataclass
class PassProgress:
    """A worker's pass and how many items (samples, or the dataset's batches) it has yielded."""

    plan: PassPlan
    items: int  # items the pass yields in all
    yielded: int = 0

    @property
    def ended(self) -> bool:
        return self.yielded >= self.items


def is_pass_record(state: Mapping[str, Any]) -> bool:
    return state.get("format") == PASS_FORMAT


def pass_record(identity: OrderIdentity, progress: PassProgress | None) -> dict:
    """A worker's state: the order it belongs to and its pass (None before the first)."""
    current = (
        None if progress is None else {**asdict(progress.plan), "items": progress.items, "yielded": progress.yielded}
    )
    return {"format": PASS_FORMAT, "version": PASS_VERSION, **asdict(identity), "pass": current}


def read_pass_record(state: Mapping[str, Any], identity: OrderIdentity) -> PassProgress | None:
    """The pass a worker's state records (None: it had not begun one), checked against ``identity``."""
    if state.get("version") != PASS_VERSION:
        raise UsageError(f"not a {PASS_FORMAT} v{PASS_VERSION} state: {dict(state)!r}")
    check_identity(state, identity)
    saved = state.get("pass")
    if saved is None:
        return None
    try:
        plan = PassPlan(**{name: int(saved[name]) for name in PassPlan.__dataclass_fields__})
        return PassProgress(plan, int(saved["items"]), int(saved["yielded"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"a {PASS_FORMAT} state with a damaged pass: {saved!r}") from exc


def check_resumable(saved: PassProgress, rank: int, world_size: int, worker: int, workers: int) -> None:
    """A :class:`UsageError` unless ``saved`` can continue exactly in this worker: the same rank of
    the same world size, the same worker of as many. Checked as the state is loaded (torchdata's
    workers load theirs as they start, and report a failure before the loader checks anything)."""
    plan = saved.plan
    if (plan.rank, plan.world_size) != (rank, world_size):
        raise UsageError(
            f"this DataLoader state was saved on rank {plan.rank} of {plan.world_size}; here is rank {rank} of "
            f"{world_size}: a worker's state resumes only on its own rank and world size; {ANYWHERE}"
        )
    if (plan.worker, plan.num_workers) != (worker, workers):
        raise UsageError(
            f"this DataLoader state was saved by worker {plan.worker} of {plan.num_workers}; here is worker "
            f"{worker} of {workers}: resume with num_workers={plan.num_workers}, or: {ANYWHERE}"
        )


def worker_resumes(state: Mapping[str, Any], identity: OrderIdentity, world: tuple[int, int]) -> PassProgress | None:
    """The pass this DataLoader worker's saved ``state`` records, checked to continue exactly here."""
    saved = read_pass_record(state, identity)
    if saved is not None:
        worker = get_worker_info()
        check_resumable(saved, *world, worker.id if worker else 0, worker.num_workers if worker else 1)
    return saved


def continued(saved: PassProgress | None, plan: PassPlan) -> tuple[int, int, int]:
    """``(epoch, start, items to skip)`` of the pass ``plan`` describes, or of ``saved`` where that
    pass continues it.

    The saved pass wins over the epoch the main process set, unless it had ended: torchdata may
    replay a few of its steps from an older snapshot (``snapshot_every_n_steps``) before it starts
    the next epoch, and a worker cannot tell that from a loop that set another epoch.
    """
    if saved is not None and (plan.epoch == saved.plan.epoch or not saved.ended):
        return saved.plan.epoch, saved.plan.start, saved.yielded
    return plan.epoch, plan.start, 0


def counted(items: Iterator[dict], progress: PassProgress) -> Iterator[dict]:
    """``items`` of a pass, each counted in ``progress`` before it is handed on (so a state saved
    on receiving an item includes it)."""
    for item in items:
        progress.yielded += 1
        yield item
