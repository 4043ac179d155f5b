"""StreamingDataset under real ``torch.distributed`` (gloo) when nothing divides evenly.

A split of 11 samples, read by 3 ranks (a share of ``ceil(11 / 3) = 4`` each, one padded position)
with dataset batch sizes 1-4 (3 divides neither 11 nor 4: batches ``[3, 1]``), with 0 and 2
DataLoader workers, with and without ``drop_last``; stopped at several points (after 2 steps of 1,
after 1 step of 3, after the last, incomplete batch, in the middle of a batch via
``state_dict(samples_seen=...)``) and resumed in new processes, on the same world size and,
elastically, from 2 ranks to 3.

The expectations are written from the documented behaviour (README, :mod:`pipeline.read.stream.order`),
not from the library's own prediction helpers: epoch ``e`` visits ``epoch_order(11, seed, e)``;
ranks take interleaved slices of the positions not yet consumed; the last step wraps around to the
start of the epoch's order (at most ``world_size - 1`` repeats an epoch), or, with ``drop_last``,
the tail short of a global step (``world_size * batch_size``) is left out; the state is the epoch
and the global position. So reading the ranks' sequences round-robin (rank 0's first sample, rank
1's first, ..., rank 0's second, ...) must give the order from the resume position on, followed by
its first samples as padding.

Three launches (the harness of ``test_stream_ddp``, with a rank script that also records every step's
state and can stop mid-batch): 3 ranks (full epochs, stops), 2 ranks (stops for the elastic
resume), 3 ranks (every resume).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from pipeline.read.stream import epoch_order
from pipeline.store.manifest import read_manifest

import test_stream_ddp
from stream_common import SEED, expected_keys, rank_script

N = 11  # samples in the split (the `eleven` fixture): not divisible by 3 (nor by 2)
WORLD = 3
SHARE = 4  # ceil(11 / 3): what every rank yields per full epoch without drop_last
BATCHES = (1, 2, 3, 4)  # 3 divides neither the split nor a rank's share: batches [3, 1]
#: drop_last: a rank's share is the whole global steps (3 * batch) that fit in 11, times the batch
DROP_SHARE = {1: 3, 2: 2, 3: 3, 4: 0}

RANK_SCRIPT = rank_script(
    imports="""
    import torch.distributed as dist
    from torch.utils.data import DataLoader
    from pipeline.read.stream import StreamingDataset
    """,
    scenario="""
    ds = StreamingDataset(config["root"], fields=("label",), seed=config["seed"], batch_size=sc["batch_size"],
                          drop_last=sc.get("drop_last", False))
    workers = sc["workers"]
    # the README's order: the loader exists before the state is loaded
    loader = DataLoader(ds, batch_size=None, num_workers=workers, persistent_workers=workers > 0)
    if sc.get("load"):
        ds.load_state_dict(json.load(open(sc["load"])))
    # "passes": the README's loop, for epoch in range(ds.epoch, epochs)
    epochs = range(ds.epoch, ds.epoch + sc["passes"]) if "passes" in sc else sc["epochs"]
    runs = []
    for epoch in epochs:
        ds.set_epoch(epoch)
        run = {"epoch": epoch, "len": len(ds), "batches": [], "states": []}
        for step, batch in enumerate(ds.track(loader)):
            run["batches"].append(list(batch["__key__"]))
            run["states"].append(ds.state_dict())
            if step + 1 == sc.get("stop"):
                break
        runs.append(run)
    # "seen": the loop used only the first `seen` samples it received (stopped mid-batch)
    saved = ds.state_dict(samples_seen=sc["seen"]) if "seen" in sc else ds.state_dict()
    if sc.get("save") and rank == 0:
        json.dump(saved, open(sc["save"], "w"))
    del loader  # persistent workers exit before the next scenario
    dist.barrier()  # the next launch reads the state only after every rank has finished
    results[sc["name"]] = {"rank": ds.rank, "world": ds.world_size, "runs": runs, "saved": saved}
    """,
)

#: Stops on 3 ranks in epoch 1, each resumed on 3 ranks in a new process:
#: name -> (batch_size, workers, stop after this many steps, samples_seen or None, drop_last, (epoch, position))
STOPS = {
    "b1-after-2-steps": (1, 2, 2, None, False, (1, 6)),
    "b3-after-1-step": (3, 2, 1, None, False, (1, 9)),
    "b3-after-last-incomplete-batch": (3, 0, 2, None, False, (2, 0)),  # batches [3, 1]: the epoch is done
    "b3-mid-batch": (3, 0, 1, 1, False, (1, 3)),  # received a batch of 3, used only its first sample
    "b2-mid-last-global-step": (2, 2, 2, 3, False, (1, 9)),  # [6, 12) holds 5 samples + 1 padding; used 3 of 4
    "drop-b1-after-2-steps": (1, 0, 2, None, True, (1, 6)),
}
#: Stops on 2 ranks in epoch 1, resumed on 3 ranks with batch size 2:
#: name -> (batch_size on 2 ranks, workers before, workers after, (epoch, position))
ELASTIC = {
    "global-6": (3, 2, 2, (1, 6)),  # 2 × 3 -> 3 × 2: the same global batch (the README's condition)
    "global-4": (2, 0, 0, (1, 4)),  # 2 × 2 -> 3 × 2: load_state_dict does not require it; 2 padded
}


def _launch(root: Path, folder: Path, world: int, scenarios: list[dict]) -> list[dict]:
    """``test_stream_ddp._launch`` (gloo processes, first failure stops the others) running this module's script."""
    return test_stream_ddp._launch(root, folder, world, scenarios, script=RANK_SCRIPT)


@pytest.fixture(scope="module")
def ddp(eleven, tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp11")
    state = {name: str(base / f"state-{name}.json") for name in [*STOPS, *ELASTIC]}
    first = [
        {"name": f"full-b{b}-w{w}", "batch_size": b, "workers": w, "epochs": [0, 1]} for b in BATCHES for w in (0, 2)
    ]
    first += [
        {"name": f"drop-b{b}-w{w}", "batch_size": b, "workers": w, "epochs": [0, 1], "drop_last": True}
        for b, w in ((1, 0), (2, 2), (3, 0), (4, 2))
    ]
    for name, (b, w, stop, seen, drop, _) in STOPS.items():
        sc = {"name": name, "batch_size": b, "workers": w, "epochs": [1], "stop": stop, "save": state[name]}
        first.append({**sc, "drop_last": drop, **({"seen": seen} if seen else {})})
    w3 = _launch(eleven, base / "w3", WORLD, first)
    w2 = _launch(
        eleven,
        base / "w2",
        2,
        [
            {"name": name, "batch_size": b, "workers": w, "epochs": [1], "stop": 1, "save": state[name]}
            for name, (b, w, _, _) in ELASTIC.items()
        ],
    )
    resumed = [
        {"name": name, "batch_size": b, "workers": 2 - w, "passes": 2, "load": state[name], "drop_last": drop}
        for name, (b, w, _, _, drop, _) in STOPS.items()  # the other number of workers than before
    ]
    resumed += [
        {"name": name, "batch_size": 2, "workers": w, "passes": 2, "load": state[name]}
        for name, (_, _, w, _) in ELASTIC.items()
    ]
    w3b = _launch(eleven, base / "w3-resumed", WORLD, resumed)
    return {"keys": read_manifest(eleven).splits["train"].keys, 3: w3, 2: w2, "3b": w3b}


# --------------------------------------------------------------------------- helpers


def _order(keys: list[str], epoch: int) -> list[str]:
    """The epoch's global order (the same on every rank, whatever the world size)."""
    return [keys[i] for i in epoch_order(len(keys), SEED, epoch)]


def _passes(results: list[dict], name: str) -> list[list[dict]]:
    """Per pass, per rank: the run records of scenario ``name``; checks the ranks came from torch.distributed."""
    assert [r[name]["rank"] for r in results] == list(range(len(results))), "ranks from torch.distributed"
    assert {r[name]["world"] for r in results} == {len(results)}
    return [list(ranks) for ranks in zip(*(r[name]["runs"] for r in results))]


def _keys(run: dict) -> list[str]:
    return [k for batch in run["batches"] for k in batch]


def _round_robin(sequences: list[list[str]]) -> list[str]:
    """Rank 0's first sample, rank 1's first, ..., rank 0's second, ...: the global positions in order."""
    assert len({len(s) for s in sequences}) == 1, f"ranks yield equal lengths: {[len(s) for s in sequences]}"
    return [s[i] for i in range(len(sequences[0])) for s in sequences]


def _check_pass(ranks: list[dict], keys: list[str], start: int, batch: int, drop_last: bool = False) -> list[str]:
    """One pass from global position ``start``, checked against the documented order, partition and
    padding; per-step states against the documented position. Returns the global sequence."""
    world, epoch = len(ranks), ranks[0]["epoch"]
    order = _order(keys, epoch)
    sequences = [_keys(run) for run in ranks]
    glob = _round_robin(sequences)
    remaining = len(keys) - start
    if drop_last:
        assert glob == order[start : start + len(glob)], "drop_last: a prefix of what remains, nothing twice"
        assert 0 <= remaining - len(glob) < world * batch, "drop_last: drops less than one global step"
    else:
        assert glob[:remaining] == order[start:], "ranks take interleaved slices of the rest of the order"
        padding = glob[remaining:]
        assert len(padding) < world, "pads less than one sample per rank"
        assert padding == order[: len(padding)], "padding wraps around to the start of the epoch's order"
    for r, (run, seq) in enumerate(zip(ranks, sequences)):
        assert run["len"] == len(seq), f"rank {r}: len(ds) is what the rank yields"
        share = len(seq)
        assert [len(b) for b in run["batches"]] == [batch] * (share // batch) + [share % batch] * (share % batch > 0)
        _check_states(run, start, world, share)
    for step in range(len(ranks[0]["states"])):
        assert len({str(run["states"][step]) for run in ranks}) == 1, "the state is the same on every rank"
    return glob


def _check_states(run: dict, start: int, world: int, share: int) -> None:
    """After each step the state is the epoch and ``start + world * samples received``; once a rank
    has received its share, the next epoch from position 0."""
    received, epoch = 0, run["epoch"]
    assert len(run["states"]) == len(run["batches"])
    for step, (batch, state) in enumerate(zip(run["batches"], run["states"])):
        received += len(batch)
        where = (epoch + 1, 0) if received == share else (epoch, start + world * received)
        assert (state["epoch"], state["position"]) == where, f"step {step}: state {state}"


def _assert_only_padding_repeats(seen: list[str], keys: list[str], epoch: int, world: int) -> None:
    """Every sample at least once; the only repeats are the epoch's first samples, fewer than ``world``."""
    counts = Counter(seen)
    assert set(counts) == set(keys), f"missing: {sorted(set(keys) - set(counts))}"
    extra = len(seen) - len(keys)
    assert 0 <= extra < world, f"{extra} repeats"
    order = _order(keys, epoch)
    assert sorted(k for k, c in counts.items() for _ in range(c - 1)) == sorted(order[:extra]), "repeats = padding"


# --------------------------------------------------------------------------- full epochs


@pytest.mark.slow
@pytest.mark.parametrize("batch", BATCHES)
def test_padded_epochs_with_remainders_on_3_ranks(ddp, batch):
    keys = ddp["keys"]
    assert len(keys) == N
    by_workers = {w: _passes(ddp[WORLD], f"full-b{batch}-w{w}") for w in (0, 2)}
    for w, passes in by_workers.items():
        assert [ranks[0]["epoch"] for ranks in passes] == [0, 1]
        for ranks in passes:
            assert [run["len"] for run in ranks] == [SHARE] * WORLD, f"workers={w}: equal lengths"
            glob = _check_pass(ranks, keys, 0, batch)
            assert len(glob) == WORLD * SHARE == N + 1
            _assert_only_padding_repeats(glob, keys, ranks[0]["epoch"], WORLD)
            assert _keys(ranks[-1])[-1] == _order(keys, ranks[0]["epoch"])[0], "the last rank's last sample pads"
            for r, run in enumerate(ranks):  # the library's own prediction agrees
                assert _keys(run) == expected_keys(keys, run["epoch"], r, WORLD, batch_size=batch)
        assert _keys(passes[0][0]) != _keys(passes[1][0]), "a new order each epoch"
    assert by_workers[0] == by_workers[2], "batches, lengths and states do not depend on num_workers"


@pytest.mark.slow
@pytest.mark.parametrize("batch", BATCHES)
def test_drop_last_epochs_with_remainders_on_3_ranks(ddp, batch):
    keys = ddp["keys"]
    workers = {1: 0, 2: 2, 3: 0, 4: 2}[batch]
    passes = _passes(ddp[WORLD], f"drop-b{batch}-w{workers}")
    assert len(passes) == 2
    for ranks in passes:
        assert [run["len"] for run in ranks] == [DROP_SHARE[batch]] * WORLD
        glob = _check_pass(ranks, keys, 0, batch, drop_last=True)
        assert len(glob) == WORLD * DROP_SHARE[batch] and len(set(glob)) == len(glob), "no padding, nothing twice"
        assert all(len(b) == batch for run in ranks for b in run["batches"]), "only whole batches"


# --------------------------------------------------------------------------- resumption


@pytest.mark.slow
@pytest.mark.parametrize("name", list(STOPS))
def test_resume_on_the_same_world_size_at_several_stop_points(ddp, name):
    keys = ddp["keys"]
    batch, _, stop, seen, drop_last, (epoch, position) = STOPS[name]
    (before,) = _passes(ddp[WORLD], name)
    saved = [r[name]["saved"] for r in ddp[WORLD]]
    assert len({str(s) for s in saved}) == 1, "every rank saves the same state"
    assert (saved[0]["epoch"], saved[0]["position"]) == (epoch, position)
    used = [_keys(run)[:seen] if seen else _keys(run) for run in before]
    assert [len(u) for u in used] == [seen or min(stop * batch, SHARE)] * WORLD
    for run in before:
        _check_states(run, 0, WORLD, DROP_SHARE[batch] if drop_last else SHARE)
    uninterrupted = [_keys(run) for run in _passes(ddp[WORLD], f"{'drop' if drop_last else 'full'}-b{batch}-w0")[1]]
    assert [u[: len(v)] for u, v in zip(uninterrupted, used)] == used, "the stopped job read the epoch's sequence"

    rest, following = _passes(ddp["3b"], name)
    assert [rest[0]["epoch"], following[0]["epoch"]] == [epoch, epoch + 1], "range(ds.epoch, ...) continues"
    glob = _check_pass(rest, keys, position, batch, drop_last)
    _check_pass(following, keys, 0, batch, drop_last)
    if epoch == 1:  # stopped mid-epoch: before + after is the uninterrupted sequence of each rank
        for r in range(WORLD):
            assert used[r] + _keys(rest[r]) == uninterrupted[r], f"rank {r}: no gap, no repeat"
        done = _round_robin(used) + glob
        if drop_last:
            assert len(set(done)) == len(done) == WORLD * DROP_SHARE[batch], "drop_last: nothing twice"
        else:
            _assert_only_padding_repeats(done, keys, epoch, WORLD)
    else:  # stopped after the epoch's last (incomplete) batch: the next epoch starts afresh
        assert all(run["batches"][-1] == _keys(run)[-1:] for run in before), "the stop was after batch [1]"
        assert sorted(k for run in before for k in _keys(run)) == sorted(keys + _order(keys, 1)[:1])
        assert position == 0 and [run["len"] for run in rest] == [SHARE] * WORLD


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ELASTIC))
def test_elastic_resume_from_2_to_3_ranks_with_a_remainder(ddp, name):
    keys = ddp["keys"]
    batch, _, _, (epoch, position) = ELASTIC[name]
    (before,) = _passes(ddp[2], name)
    saved = [r[name]["saved"] for r in ddp[2]]
    assert len({str(s) for s in saved}) == 1, "every rank saves the same state"
    assert (saved[0]["epoch"], saved[0]["position"], saved[0]["world_size"]) == (epoch, position, 2)
    assert [[len(b) for b in run["batches"]] for run in before] == [[batch]] * 2, "one step of a batch each"
    for run in before:
        _check_states(run, 0, 2, -(-N // 2))
    seen = _round_robin([_keys(run) for run in before])
    assert seen == _order(keys, epoch)[:position], "what 2 ranks saw is the start of the order"

    rest, following = _passes(ddp["3b"], name)
    assert [rest[0]["epoch"], following[0]["epoch"]] == [epoch, epoch + 1]
    assert [run["len"] for run in rest] == [-(-(N - position) // WORLD)] * WORLD
    glob = _check_pass(rest, keys, position, 2)
    _assert_only_padding_repeats(seen + glob, keys, epoch, WORLD)
    assert len(seen + glob) - N == {"global-6": 1, "global-4": 2}[name], "padding fills the last global step"
    _check_pass(following, keys, 0, 2)
