"""A real ``lightning.Trainer`` (CPU, 2 ranks, DDP over gloo) saves and restores ``StreamingDataLoader``
mid-epoch with no user code, on the same and on another number of ranks.

One run stops after 2 steps and saves a checkpoint; two runs resume it with ``fit(ckpt_path=...)``,
on 2 ranks and on 1 (with another number of DataLoader workers too). Every rank logs the keys of
each batch its ``training_step`` receives: over the first run and either resumption, every sample
is seen exactly once per epoch, in the order the dataset's order functions predict.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from pipeline import StreamingDataset

from stream_common import SEED, expected_keys

pytestmark = pytest.mark.slow

EPOCHS, BATCH = 2, 1

SCRIPT = textwrap.dedent(
    """
    import json, sys

    import lightning as L
    import torch

    from pipeline import StreamingDataLoader, StreamingDataset


    class Model(L.LightningModule):
        def __init__(self, config):
            super().__init__()
            self.config = config
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def train_dataloader(self):
            ds = StreamingDataset(self.config["root"], fields=("label",), seed=self.config["seed"], batch_size=1)
            return StreamingDataLoader(ds, num_workers=self.config["workers"])

        def training_step(self, batch, index):
            record = {"run": self.config["name"], "epoch": self.current_epoch, "step": self.global_step}
            record["keys"] = list(batch["__key__"])
            with open(f"{self.config['log']}.rank{self.global_rank}", "a") as log:
                log.write(json.dumps(record) + "\\n")
            return self.weight.sum() * batch["label"].float().mean()

        def val_dataloader(self):
            return torch.utils.data.DataLoader(torch.zeros(2, 1))

        def validation_step(self, batch, index):
            record = {"run": self.config["name"], "validated": self.current_epoch}
            with open(f"{self.config['log']}.rank{self.global_rank}", "a") as log:
                log.write(json.dumps(record) + "\\n")

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)


    if __name__ == "__main__":
        config = json.loads(sys.argv[1])
        trainer = L.Trainer(
            accelerator="cpu",
            devices=config["devices"],
            strategy="ddp" if config["devices"] > 1 else "auto",
            max_epochs=config["epochs"],
            max_steps=config.get("max_steps", -1),
            logger=False,
            callbacks=[L.pytorch.callbacks.ModelCheckpoint(
                config["folder"], "mid-epoch", every_n_train_steps=2, save_top_k=-1
            )] if config.get("checkpoint") else [],
            enable_checkpointing=bool(config.get("checkpoint")),
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        trainer.fit(Model(config), ckpt_path=config.get("resume"))
    """
)


def _fit(tmp_path: Path, **config) -> None:
    script = tmp_path / "fit.py"
    script.write_text(SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "PYTHONWARNINGS": "ignore"}
    env.pop("WORLD_SIZE", None), env.pop("RANK", None), env.pop("LOCAL_RANK", None)
    done = subprocess.run(
        [sys.executable, str(script), json.dumps(config)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]


def _received(log: Path, world: int, run: str, before_step: int = 1 << 30) -> dict[tuple[int, int], list[str]]:
    """Keys each (epoch, rank) received in ``run`` before global step ``before_step``."""
    got: dict[tuple[int, int], list[str]] = {}
    for rank in range(world):
        for line in Path(f"{log}.rank{rank}").read_text().splitlines():
            record = json.loads(line)
            if record["run"] == run and "keys" in record and record["step"] < before_step:
                got.setdefault((record["epoch"], rank), []).extend(record["keys"])
    return got


@pytest.fixture(scope="module")
def first_run(converted, tmp_path_factory):
    """2 ranks, 2 workers each: a checkpoint after 2 steps (4 of 12 samples), then a 3rd step, lost."""
    folder = tmp_path_factory.mktemp("lightning")
    log = folder / "keys"
    common = {"root": str(converted), "seed": SEED, "log": str(log), "epochs": EPOCHS, "folder": str(folder)}
    _fit(folder, **common, name="first", devices=2, workers=2, max_steps=3, checkpoint=True)
    return folder, common, _received(log, 2, "first", before_step=2)


@pytest.mark.parametrize("devices, workers", [(2, 1), (1, 0)], ids=["on 2 ranks", "on 1 rank"])
def test_lightning_resumes_mid_epoch_exactly(converted, first_run, devices, workers):
    folder, common, first = first_run
    keys = StreamingDataset(converted, fields=("label",)).keys
    assert first == {(0, r): expected_keys(keys, 0, r, 2, batch_size=BATCH)[:2] for r in range(2)}, "2 steps"

    run = f"resumed on {devices}"
    _fit(folder, **common, name=run, devices=devices, workers=workers, resume=str(folder / "mid-epoch.ckpt"))
    resumed = _received(Path(common["log"]), devices, run)

    rest = {rank: expected_keys(keys, 0, rank, devices, start=4, batch_size=BATCH) for rank in range(devices)}
    assert {r: resumed[(0, r)] for r in range(devices)} == rest, "the rest of epoch 0, split over the ranks now"
    epoch0 = [k for r in range(2) for k in first[(0, r)]] + [k for r in range(devices) for k in resumed[(0, r)]]
    assert Counter(epoch0) == Counter(keys), "every sample of epoch 0 exactly once"
    for rank in range(devices):
        assert resumed[(1, rank)] == expected_keys(keys, 1, rank, devices, batch_size=BATCH), "then epoch 1, whole"
    validated = {json.loads(line).get("validated") for line in Path(f"{common['log']}.rank0").read_text().splitlines()}
    assert {0, 1} <= validated, "each epoch ends with its validation: Lightning saw its last batch"
