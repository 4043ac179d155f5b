"""The command line end to end, and conversion on a real external Dask cluster."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from distributed import Client

from pipeline.cli import main, parse_size
from pipeline.store.manifest import read_manifest

from conftest import copy_output

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def external_cluster(tmp_path_factory):
    """``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1, as a user would start them."""
    folder = tmp_path_factory.mktemp("cluster")
    scheduler_file = folder / "scheduler.json"
    dask = str(Path(sys.executable).with_name("dask"))
    scheduler = subprocess.Popen(
        [
            dask,
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-dashboard",
            "--scheduler-file",
            str(scheduler_file),
        ],
        cwd=folder,
    )
    workers = [
        subprocess.Popen(
            [
                dask,
                "worker",
                "--scheduler-file",
                str(scheduler_file),
                "--nthreads",
                "1",
                "--host",
                "127.0.0.1",
                "--no-dashboard",
                "--name",
                f"w{i}",
            ],
            cwd=folder,
        )
        for i in range(2)
    ]
    try:
        with Client(scheduler_file=str(scheduler_file), timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            yield client.scheduler.address
    finally:
        for process in [*workers, scheduler]:
            process.terminate()
        for process in [*workers, scheduler]:
            process.wait(timeout=60)


def test_convert_and_verify_on_an_external_cluster(external_cluster, train_zip, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        main(
            [
                "convert",
                str(train_zip),
                "--out",
                str(out),
                "--scheduler",
                external_cluster,
                "--shard-size",
                "8MB",
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "converted 12 samples (train 12)" in printed and "samples/s" in printed
    assert len(read_manifest(out).splits["train"].shards) >= 2
    with Client(external_cluster) as client:
        assert len(client.scheduler_info()["workers"]) == 2, "the external workers stayed up"
    assert main(["verify", str(train_zip), "--out", str(out), "--scheduler", external_cluster, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "verify against sources: 12 samples" in printed and "both formats: OK" in printed
    assert re.search(r"time: [\d.]+ s \([\d.]+ s cluster start-up\), [1-9][\d.]* samples/s checking", printed)


def test_cli_synth_convert_verify_and_a_detected_corruption(tmp_path, converted, train_zip, test_zip, capsys):
    archive = tmp_path / "tiny.zip"
    assert main(["synth", str(archive), "--patients", "1", "--shapes", "2", "--values", "tensor"]) == 0
    assert archive.exists()

    out = copy_output(converted, tmp_path)
    assert main(["verify", str(train_zip), str(test_zip), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    shard = next((out / "wds").glob("train-*.tar"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["verify", "--out", str(out), "--workers", "1", "--no-progress"]) == 1
    printed = capsys.readouterr().out
    assert f"wds/{shard.name}: sha256 differs" in printed and "FAILED" in printed


def test_cli_errors_name_the_problem_and_exit_2(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "missing.zip"), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "missing.zip: no such file or directory" in capsys.readouterr().err
    assert main(["verify", "--out", str(tmp_path / "nothing")]) == 2
    assert "no manifest" in capsys.readouterr().err


@pytest.mark.parametrize("text, expected", [("256MB", 256_000_000), ("1GiB", 2**30), ("512", 512), ("1.5kb", 1500)])
def test_sizes_parse(text, expected):
    assert parse_size(text) == expected


def test_console_script_is_installed():
    result = subprocess.run(
        [str(Path(sys.executable).with_name("ssmspine")), "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("ssmspine ")
