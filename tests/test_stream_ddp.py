"""StreamingDataset under real torch.distributed (gloo on 127.0.0.1): three launches shared by several tests."""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from pipeline.store.manifest import read_manifest

from stream_common import SEED, expected_keys, flat_keys, rank_script

# --------------------------------------------------------------------------- real torch.distributed

RANK_SCRIPT = rank_script(
    imports="""
    import pickle
    import torch, torch.distributed as dist
    from torch.utils.data import DataLoader
    from torchdata.stateful_dataloader import StatefulDataLoader
    from pipeline import Source
    from pipeline.read.stream import StreamingDataset
    """,
    scenario="""
    if sc.get("mix"):  # train 3 : test 1 over 16 positions: the test split upsampled
        mix = [Source(config["root"], "train", weight=3), Source(config["root"], "test", weight=1)]
        ds = StreamingDataset(mix, fields=("label",), seed=config["seed"], batch_size=sc.get("batch_size"),
                              epoch_size=16)
    else:
        ds = StreamingDataset(config["root"], split=sc.get("split", "train"), fields=("label",),
                              seed=config["seed"], batch_size=sc.get("batch_size"))
    if sc.get("load"):
        ds.load_state_dict(json.load(open(sc["load"])))
    runs = []
    stateful = sc.get("stateful", False)  # torchdata's StatefulDataLoader, its own state per rank, no track()
    loader = (StatefulDataLoader if stateful else DataLoader)(
        ds, batch_size=sc.get("loader_batch"), num_workers=sc["workers"],
        multiprocessing_context=sc.get("context"), persistent_workers=sc.get("persistent", False))
    if sc.get("load_loader"):
        loader.load_state_dict(pickle.load(open(sc["load_loader"].format(rank=rank), "rb")))
    for epoch in sc["epochs"]:
        ds.set_epoch(epoch)
        length, keys, ok = len(ds), [], True
        for step, batch in enumerate(loader if stateful else ds.track(loader)):
            k = batch["__key__"]
            keys += [k] if isinstance(k, str) else k
            ok = ok and isinstance(batch["label"], torch.Tensor) and batch["label"].dtype == torch.int64
            if step + 1 == sc.get("stop"):
                break
        state = None if stateful else ds.state_dict()
        runs.append({"epoch": epoch, "len": length, "keys": keys, "tensors": ok, "state": state})
    if sc.get("save_loader"):
        pickle.dump(loader.state_dict(), open(sc["save_loader"].format(rank=rank), "wb"))
    if sc.get("save") and rank == 0:
        json.dump(ds.state_dict(), open(sc["save"], "w"))
    dist.barrier()  # the next launch reads the state only after every rank has finished
    results[sc["name"]] = {"rank": ds.rank, "world": ds.world_size, "runs": runs}
    """,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(root: Path, folder: Path, world: int, scenarios: list[dict], script: str = RANK_SCRIPT) -> list[dict]:
    """Run ``script`` (by default RANK_SCRIPT) on ``world`` processes; return each rank's results."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rank.py").write_text(script)
    config = {"root": str(root), "seed": SEED, "port": _free_port(), "out": str(folder), "scenarios": scenarios}
    (folder / "config.json").write_text(json.dumps(config))
    inherited = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in inherited}  # ranks come from torch.distributed
    env["GLOO_SOCKET_IFNAME"] = "lo"
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    procs = [
        subprocess.Popen(
            [sys.executable, str(folder / "rank.py"), str(folder / "config.json"), str(r), str(world)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(world)
    ]
    # one thread per rank collects its output; the first failure stops the others (no hang on a dead peer)
    finished: queue.Queue = queue.Queue()
    for r, p in enumerate(procs):
        threading.Thread(target=lambda r=r, p=p: finished.put((r, p.communicate()[0], p.wait())), daemon=True).start()
    failed = []
    try:
        for _ in procs:
            r, output, rc = finished.get(timeout=300)
            if rc:
                failed.append(f"rank {r} exited {rc}:\n{output}")
                break
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert not failed, "\n".join(failed)
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(world)]


@pytest.fixture(scope="module")
def ddp(converted, tmp_path_factory):
    """Three launches: 2 ranks (stop mid-epoch), 3 ranks (elastic resume; stop), 2 ranks (resume both)."""
    base = tmp_path_factory.mktemp("ddp")
    state2, state3 = str(base / "state-w2.json"), str(base / "state-w3.json")
    loaders = str(base / "stateful-loader-rank{rank}.pkl")  # StatefulDataLoader's state, one per rank
    w2 = _launch(
        converted,
        base / "w2",
        2,
        [
            {"name": "full-0", "workers": 0, "batch_size": 3, "epochs": [0, 1]},
            {"name": "full-2", "workers": 2, "batch_size": 3, "epochs": [0, 1], "persistent": True},
            {"name": "spawned-workers", "workers": 1, "context": "spawn", "batch_size": 3, "epochs": [0]},
            {"name": "per-sample", "workers": 0, "loader_batch": 2, "epochs": [0]},
            {"name": "padded", "split": "test", "workers": 2, "batch_size": 1, "epochs": [0]},
            {"name": "stop", "workers": 2, "batch_size": 3, "epochs": [2], "stop": 1, "save": state2},
            {"name": "mixed", "mix": True, "workers": 2, "batch_size": 2, "epochs": [0, 1]},
            {
                "name": "stateful-stop",
                "stateful": True,
                "workers": 2,
                "batch_size": 1,
                "epochs": [3],
                "stop": 2,
                "save_loader": loaders,
            },
        ],
    )
    w3 = _launch(
        converted,
        base / "w3",
        3,
        [
            {"name": "full-0", "workers": 0, "batch_size": 2, "epochs": [0, 1]},
            {"name": "full-2", "workers": 2, "batch_size": 2, "epochs": [0, 1]},
            {"name": "elastic", "workers": 2, "batch_size": 2, "epochs": [2], "load": state2},
            {"name": "stop", "workers": 0, "batch_size": 2, "epochs": [5], "stop": 1, "save": state3},
        ],
    )
    w2b = _launch(
        converted,
        base / "w2-again",
        2,
        [
            {"name": "resume", "workers": 2, "batch_size": 3, "epochs": [2], "load": state2},
            {
                "name": "stateful-resume",
                "stateful": True,
                "workers": 2,
                "batch_size": 1,
                "epochs": [3],
                "load_loader": loaders,
            },
            {"name": "elastic", "workers": 0, "batch_size": 3, "epochs": [5, 6], "load": state3},
        ],
    )
    return {"keys": read_manifest(converted).splits, 2: w2, 3: w3, "2b": w2b}


def _runs(results, name):
    """Per epoch, per rank: the run records of scenario ``name``."""
    per_rank = [r[name]["runs"] for r in results]
    return [list(epoch) for epoch in zip(*per_rank)]


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_ddp_coverage_equal_lengths_determinism_and_workers(ddp, world):
    keys = list(ddp["keys"]["train"].keys)
    for name in ("full-0", "full-2"):
        assert [r[name]["rank"] for r in ddp[world]] == list(range(world)), "ranks from torch.distributed"
        assert {r[name]["world"] for r in ddp[world]} == {world}
        epochs = _runs(ddp[world], name)
        for e, ranks in enumerate(epochs):
            assert all(run["tensors"] for run in ranks)
            assert len({len(run["keys"]) for run in ranks}) == 1, "equal lengths"
            assert all(run["len"] == len(run["keys"]) for run in ranks), "len(ds) is what a rank yields"
            assert sorted(k for run in ranks for k in run["keys"]) == sorted(keys), "each sample once"
            for r, run in enumerate(ranks):
                assert run["keys"] == expected_keys(keys, e, r, world), "depends on (seed, epoch, world) only"
        assert [run["keys"] for run in epochs[0]] != [run["keys"] for run in epochs[1]], "new order each epoch"
    assert _runs(ddp[world], "full-0") == _runs(ddp[world], "full-2"), "independent of num_workers"


@pytest.mark.slow
def test_ddp_spawned_workers_per_sample_mode_and_padding(ddp):
    keys = list(ddp["keys"]["train"].keys)
    spawned = _runs(ddp[2], "spawned-workers")[0]
    assert spawned == _runs(ddp[2], "full-0")[0], "spawned workers get the main process's rank"
    per_sample = _runs(ddp[2], "per-sample")[0]
    assert [run["keys"] for run in per_sample] == [expected_keys(keys, 0, r, 2) for r in range(2)]
    test_keys = list(ddp["keys"]["test"].keys)
    padded = _runs(ddp[2], "padded")[0]
    assert [len(run["keys"]) for run in padded] == [2, 2]
    counts = Counter(k for run in padded for k in run["keys"])
    assert set(counts) == set(test_keys) and sum(counts.values()) == 4
    assert counts[expected_keys(test_keys, 0, 0, 1)[0]] == 2, "padding repeats the epoch's first sample"


@pytest.mark.slow
def test_ddp_resume_same_world_size_in_a_new_process(ddp):
    keys = list(ddp["keys"]["train"].keys)
    before = _runs(ddp[2], "stop")[0]
    assert [len(run["keys"]) for run in before] == [3, 3]
    assert len({json.dumps(run["state"]) for run in before}) == 1, "every rank saves the same state"
    assert before[0]["state"]["epoch"] == 2 and before[0]["state"]["position"] == 6
    after = _runs(ddp["2b"], "resume")[0]
    assert all(run["len"] == 3 for run in after)
    seen = [k for run in before + after for k in run["keys"]]
    assert sorted(seen) == sorted(keys), "no repeats, no gaps"
    for r in range(2):
        assert before[r]["keys"] + after[r]["keys"] == expected_keys(keys, 2, r, 2), "the rest of the same sequence"


@pytest.mark.slow
def test_ddp_mixture_is_what_each_rank_predicts_alone(ddp, converted):
    """A mixture under real torch.distributed: each rank reads what the mixture, told its rank, reads in process."""
    from pipeline import Source, StreamingDataset

    mix = [Source(converted, "train", weight=3), Source(converted, "test", weight=1)]
    for epoch, ranks in enumerate(_runs(ddp[2], "mixed")):
        alone = []
        for rank in range(2):
            ds = StreamingDataset(
                mix, fields=("label",), seed=SEED, batch_size=2, epoch_size=16, rank=rank, world_size=2
            )
            ds.set_epoch(epoch)
            alone.append(flat_keys(ds))
        assert [run["keys"] for run in ranks] == alone
        counts = Counter(k for run in ranks for k in run["keys"])
        assert sum(counts.values()) == 16 and len(counts) == 15, "12 train once, 3 test, 1 of them twice"


@pytest.mark.slow
def test_ddp_stateful_dataloader_resumes_each_rank_exactly(ddp):
    """torchdata's StatefulDataLoader with 2 workers per rank, stopped after 2 batches, resumed in new processes."""
    keys = list(ddp["keys"]["train"].keys)
    before, after = _runs(ddp[2], "stateful-stop")[0], _runs(ddp["2b"], "stateful-resume")[0]
    assert [len(run["keys"]) for run in before] == [2, 2]
    for r in range(2):
        assert before[r]["keys"] + after[r]["keys"] == expected_keys(keys, 3, r, 2), "the rest of the rank's sequence"
    assert sorted(k for run in before + after for k in run["keys"]) == sorted(keys), "no repeats, no gaps"


@pytest.mark.slow
def test_ddp_elastic_resume_from_2_to_3_ranks_and_back(ddp):
    keys = list(ddp["keys"]["train"].keys)
    before = [k for run in _runs(ddp[2], "stop")[0] for k in run["keys"]]
    after = _runs(ddp[3], "elastic")[0]
    assert [len(run["keys"]) for run in after] == [2, 2, 2]
    assert sorted(before + [k for run in after for k in run["keys"]]) == sorted(keys), "no repeats, no gaps"
    assert all(run["state"]["epoch"] == 3 and run["state"]["position"] == 0 for run in after), "epoch done"
    # 3 ranks × 2 stop after one step of epoch 5; 2 ranks × 3 finish it, then run epoch 6 in full
    before3 = [k for run in _runs(ddp[3], "stop")[0] for k in run["keys"]]
    epoch5, epoch6 = _runs(ddp["2b"], "elastic")
    assert sorted(before3 + [k for run in epoch5 for k in run["keys"]]) == sorted(keys)
    assert [run["keys"] for run in epoch6] == [expected_keys(keys, 6, r, 2) for r in range(2)]
