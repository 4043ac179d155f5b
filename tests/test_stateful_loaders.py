"""torchdata's ``StatefulDataLoader`` over ``StreamingDataset``: exact mid-epoch resumption, or a clear refusal.

Each run trains two epochs, stopping at the given points: there it saves ``loader.state_dict()``
(through pickle, as a checkpoint would), drops the dataset and the loader, and builds both anew, as
a new process would. What the loop received over all its lives must be exactly what one
uninterrupted run receives: no sample repeated, none skipped, in the same order.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass

import pytest
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from pipeline import StreamingDataset
from pipeline.errors import UsageError

from stream_common import SEED, expected_keys, flat_keys

EPOCHS = 2
BATCHES = 6  # 12 train samples in batches of 2


@dataclass(frozen=True)
class Setup:
    workers: int = 0
    persistent: bool = False
    every: int = 1  # snapshot_every_n_steps
    dataset_batch: int | None = 2
    loader_batch: int | None = None
    rank: int = 0
    world: int = 1


def _loader(out, setup: Setup, **overrides) -> StatefulDataLoader:
    ds = StreamingDataset(
        out, fields=("label",), seed=SEED, batch_size=setup.dataset_batch, rank=setup.rank, world_size=setup.world
    )
    return StatefulDataLoader(
        ds,
        batch_size=setup.loader_batch,
        num_workers=setup.workers,
        persistent_workers=setup.persistent,
        snapshot_every_n_steps=setup.every,
        **overrides,
    )


def train(out, setup: Setup, stops: list[tuple[int, int | str]]) -> list[str]:
    """Keys received over ``EPOCHS`` epochs, stopping and resuming at each ``(epoch, batches)`` of
    ``stops``: 0 saves before the epoch's first batch, ``"after"`` once its loop has ended."""
    received: list[str] = []
    state, first_epoch, stops = None, 0, list(stops)
    while True:
        loader = _loader(out, setup)
        if state is not None:
            loader.load_state_dict(pickle.loads(state))
        stopped = False
        for epoch in range(first_epoch, EPOCHS):
            loader.dataset.set_epoch(epoch)
            if stops and stops[0] == (epoch, 0):
                state, stopped = pickle.dumps(loader.state_dict()), True
                break
            for step, batch in enumerate(loader, start=1):
                received += flat_keys([batch])
                if stops and stops[0] == (epoch, step):
                    state, stopped = pickle.dumps(loader.state_dict()), True
                    break
            if stopped:
                break
            if stops and stops[0] == (epoch, "after"):
                state, stopped = pickle.dumps(loader.state_dict()), True
                epoch += 1  # the loop's own epoch count moved on before it was saved
                break
        if not stopped:
            return received
        first_epoch = epoch
        stops.pop(0)


def reference(out, setup: Setup) -> list[str]:
    keys = StreamingDataset(out, fields=("label",)).keys
    return [
        k
        for epoch in range(EPOCHS)
        for k in expected_keys(keys, epoch, setup.rank, setup.world, batch_size=setup.dataset_batch)
    ]


SETUPS = {
    "0 workers": Setup(),
    "2 workers": Setup(workers=2),
    "2 persistent workers": Setup(workers=2, persistent=True),
    "snapshots every 4 steps": Setup(workers=2, persistent=True, every=4),
    "workers batching single samples": Setup(workers=2, dataset_batch=None, loader_batch=2),
}
STOPS = {
    "at step 0": [(0, 0)],
    "mid-epoch": [(0, 2)],
    "mid-epoch, then again": [(0, 3), (1, 1)],
    "at the last batch": [(0, BATCHES)],
    "after the epoch's loop": [(0, "after")],
}


#: Every stop with and without workers; the other setups where they differ.
CASES = [(setup, stop) for setup in ("0 workers", "2 workers") for stop in STOPS] + [
    ("2 persistent workers", "mid-epoch, then again"),
    ("2 persistent workers", "at the last batch"),
    ("snapshots every 4 steps", "mid-epoch, then again"),
    ("snapshots every 4 steps", "after the epoch's loop"),
    ("workers batching single samples", "mid-epoch, then again"),
    ("workers batching single samples", "at the last batch"),
]


@pytest.mark.parametrize("setup, stops", [(SETUPS[a], STOPS[b]) for a, b in CASES], ids=[f"{a}, {b}" for a, b in CASES])
def test_stateful_dataloader_resumes_exactly(converted, setup, stops):
    if setup.dataset_batch is None and stops[0][1] not in (0, "after"):
        stops = [
            (e, 2 * s if isinstance(s, int) else s) for e, s in stops
        ]  # the loader's batches hold 1 sample... in 2
    got = train(converted, setup, stops)
    want = reference(converted, setup)
    if setup.dataset_batch is None:  # workers batch their own samples: the same samples per epoch, in their order
        per_epoch = len(want) // EPOCHS
        assert [sorted(got[i : i + per_epoch]) for i in range(0, len(got), per_epoch)] == [
            sorted(want[i : i + per_epoch]) for i in range(0, len(want), per_epoch)
        ]
        assert got == train(converted, setup, []), "the same sequence as an uninterrupted run"
    else:
        assert got == want


@pytest.mark.parametrize("workers", [0, 2])
def test_each_of_two_ranks_resumes_exactly(converted, workers):
    """DDP's ranks each keep their loader's state: every rank continues its own share."""
    seen = []
    for rank in range(2):
        setup = Setup(workers=workers, rank=rank, world=2)
        got = train(converted, setup, [(0, 2), (1, 3)])
        assert got == reference(converted, setup)
        seen += got
    assert sorted(seen) == sorted(StreamingDataset(converted, fields=("label",)).keys * EPOCHS)


def _saved_mid_epoch(out, setup: Setup) -> bytes:
    loader = _loader(out, setup)
    loader.dataset.set_epoch(0)
    batches = iter(loader)
    next(batches), next(batches)
    return pickle.dumps(loader.state_dict())


@pytest.mark.parametrize(
    "now, reason",
    [
        (Setup(workers=1), "resume with num_workers=2"),
        (Setup(workers=2, rank=1, world=2), "saved on rank 0 of 1; here is rank 1 of 2"),
    ],
    ids=["other num_workers", "other world size"],
)
def test_a_state_that_cannot_resume_exactly_is_refused(converted, now, reason):
    state = _saved_mid_epoch(converted, Setup(workers=2))
    loader = _loader(converted, now)
    loader.load_state_dict(pickle.loads(state))
    loader.dataset.set_epoch(0)
    with pytest.raises(UsageError, match=reason) as caught:
        next(iter(loader))
    assert "StreamingDataLoader" in str(caught.value), "names the protocol that resumes anywhere"


@pytest.mark.parametrize("workers", [0, 2])
def test_a_mid_epoch_state_finishes_its_own_epoch(converted, workers):
    """The loader's state decides which pass continues, whatever epoch the loop set before loading it."""
    state = _saved_mid_epoch(converted, Setup(workers=workers))
    loader = _loader(converted, Setup(workers=workers))
    loader.load_state_dict(pickle.loads(state))
    loader.dataset.set_epoch(1)
    keys = loader.dataset.keys
    assert flat_keys(loader) == expected_keys(keys, 0, 0, 1, batch_size=2)[4:]


def test_the_main_process_does_not_guess_what_workers_delivered(converted):
    """A plain DataLoader with workers and no track(): the dataset's state would be the start of the
    pass (a silent replay), so it is refused, naming the ways that count."""
    ds = StreamingDataset(converted, fields=("label",), seed=SEED, batch_size=2)
    for _ in DataLoader(ds, batch_size=None, num_workers=2):
        break
    with pytest.raises(UsageError, match="StreamingDataLoader or ds.track"):
        ds.state_dict()
    assert ds.state_dict(samples_seen=2)["position"] == 2


def test_a_worker_state_does_not_load_into_the_main_process(converted):
    state = pickle.loads(_saved_mid_epoch(converted, Setup(workers=2)))
    worker_state = next(iter(state["_snapshot"]["_worker_snapshots"].values()))["dataset_state"]
    with pytest.raises(UsageError, match="loads only into that worker"):
        StreamingDataset(converted, fields=("label",), seed=SEED, batch_size=2).load_state_dict(worker_state)


def test_streaming_dataloader_refuses_what_it_cannot_resume(converted):
    from pipeline import StreamingDataLoader

    batched = StreamingDataset(converted, fields=("label",), batch_size=2)
    with pytest.raises(UsageError, match="in_order=False"):
        StreamingDataLoader(batched, num_workers=2, in_order=False)
    with pytest.raises(UsageError, match="already batches"):
        StreamingDataLoader(batched, batch_size=2)
    with pytest.raises(UsageError, match="give the dataset batch_size=4"):
        StreamingDataLoader(StreamingDataset(converted, fields=("label",)), batch_size=4, num_workers=2)
    with pytest.raises(UsageError, match="reads a pipeline.StreamingDataset"):
        StreamingDataLoader([1, 2, 3])


def test_a_state_asked_before_set_epoch_leaves_the_pass_to_the_epoch_set(converted):
    """torchdata makes the iterator when a state is asked before the first batch; the pass is fixed
    only at its first item, so the loop's set_epoch after that still decides (0 workers)."""
    loader = _loader(converted, Setup())
    loader.state_dict()
    loader.dataset.set_epoch(1)
    assert flat_keys(loader) == expected_keys(loader.dataset.keys, 1, 0, 1, batch_size=2)
