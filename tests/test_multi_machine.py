"""A rehearsal of a conversion on machines that share nothing but a bucket.

``dask scheduler`` and two ``dask worker`` processes started in working directories of their own,
reaching a real S3-protocol server (moto, on 127.0.0.1) only through their environment, and only
through a proxy that answers 503 to some requests and drops others, as object stores and networks
do. The conversion goes from ``s3://`` to ``s3://``; it is killed once some shards are done and
resumed; then ``verify`` (against the manifest's digests of the sources) and both readers run on the
bucket, the readers bit for bit against the sources.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import numpy as np
import pytest
from distributed import Client

from pipeline import StreamingDataset, ZarrDataset
from pipeline.tools.synth import SynthConfig, write_archive

from conftest import load_trusted

pytestmark = pytest.mark.slow

FIELDS = ("img", "label")


@pytest.fixture(scope="module")
def flaky_s3(s3_server):
    """The S3 server behind a proxy that fails every 7th request (503) and drops every 11th."""
    from http_server import FlakyProxy, running

    with running(FlakyProxy(s3_server.endpoint_url, fail_every=7, drop_every=11)) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def machines(tmp_path_factory, s3_server, flaky_s3):
    """A scheduler and two workers, each in a working directory of its own, all reaching S3 through
    the flaky proxy; returns the scheduler's address and the environment a client needs."""
    env = {**os.environ, **s3_server.environment(), "AWS_ENDPOINT_URL": flaky_s3.url.rstrip("/")}
    env["SSMSPINE_RETRY_DELAY"] = "0.02"
    scheduler_file = tmp_path_factory.mktemp("shared-nothing") / "scheduler.json"
    dask = str(Path(sys.executable).with_name("dask"))
    common = ["--host", "127.0.0.1", "--no-dashboard", "--scheduler-file", str(scheduler_file)]
    processes = [subprocess.Popen([dask, "scheduler", "--port", "0", *common], cwd=scheduler_file.parent, env=env)]
    for name in ("machine-a", "machine-b"):
        folder = tmp_path_factory.mktemp(name)
        processes.append(
            subprocess.Popen(
                [dask, "worker", "--nthreads", "1", "--no-nanny", "--name", name, *common], cwd=folder, env=env
            )
        )
    try:
        with Client(scheduler_file=str(scheduler_file), timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            yield client.scheduler.address, env
    finally:
        for process in processes:
            process.kill()  # the test is over: no graceful close to wait for
        for process in processes:
            process.wait(timeout=60)


def _ssmspine(args: list[str], env: dict, cwd: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "pipeline.cli", *args, "--no-progress"]
    return subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_s3_to_s3_on_two_machines_killed_resumed_and_verified(
    machines, s3_server, flaky_s3, tmp_path_factory, tmp_path
):
    scheduler, env = machines
    archive = write_archive(tmp_path_factory.mktemp("src") / "SSMSpine_Train.zip", SynthConfig(patients=1, shapes=6))
    fs = fsspec.filesystem("s3", skip_instance_cache=True)  # straight to the server, for the test's own looks
    source = f"s3://{s3_server.new_bucket('sources')}/SSMSpine_Train.zip"
    fs.put_file(str(archive), source)
    out = f"s3://{s3_server.new_bucket('shards')}/ssmspine"
    convert = ["convert", source, "--out", out, "--scheduler", scheduler, "--shard-size", "1"]

    first = _ssmspine(convert, env, tmp_path)
    while not fs.glob(f"{out}/.progress/train-*.json"):  # the first finished shard's record
        assert first.poll() is None, f"the conversion ended before a shard was recorded: {first.communicate()}"
        fs.invalidate_cache()
        time.sleep(0.05)  # polls the bucket for a condition; not a synchronisation by time
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    assert not fs.exists(f"{out}/manifest.json"), "killed before it could finish"

    second = _ssmspine(convert, env, tmp_path)
    printed, errors = second.communicate(timeout=600)
    assert second.returncode == 0, errors
    written, kept = map(int, _between(printed, "shards: ", " kept").replace(" written,", "").split())
    assert kept >= 1 and written + kept == 6, printed

    checked = _ssmspine(["verify", "--out", out, "--scheduler", scheduler], env, tmp_path)  # vs the digests
    printed, errors = checked.communicate(timeout=600)
    assert checked.returncode == 0 and "both formats: OK" in printed, printed + errors
    assert flaky_s3.failures > 0, "the proxy failed some requests, and the retries got past them"

    expected = {key: load_trusted(archive, member) for key, member in _members(archive).items()}
    zarr = ZarrDataset(out, fields=FIELDS)
    streamed = {s["__key__"]: s for s in StreamingDataset(out, fields=FIELDS, shuffle=False)}
    assert sorted(zarr.keys) == sorted(streamed) == sorted(expected)
    for row, key in enumerate(zarr.keys):
        for field in FIELDS:
            truth = np.asarray(expected[key][field])
            assert zarr[row][field].numpy().tobytes() == truth.tobytes(), (key, field)
            assert streamed[key][field].numpy().tobytes() == truth.tobytes(), (key, field)
    assert not list(tmp_path.iterdir()), "nothing was written in the client's working directory"


def _between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


def _members(archive: Path) -> dict[str, str]:
    from pipeline.source.members import list_members

    return {m.key: m.member for m in list_members(str(archive))}
