"""The training example runs as the README says: torchrun, 2 ranks (gloo on CPU), on a converted output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parents[1] / "examples" / "train_ddp.py"


@pytest.mark.slow
def test_train_ddp_runs_an_epoch_on_two_ranks(converted, tmp_path):
    checkpoint = tmp_path / "checkpoint.pt"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        str(EXAMPLE),
        str(converted),
        "--epochs",
        "1",
        "--workers",
        "1",
        "--size",
        "32",
        "--batch-size",
        "2",
        "--checkpoint",
        str(checkpoint),
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 ranks × batch 2" in result.stdout and "epoch 0: 12 samples" in result.stdout, result.stdout
    assert checkpoint.exists(), "the data position is saved with the model"
