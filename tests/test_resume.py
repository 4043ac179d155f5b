"""Interrupted conversions resume; finished shards are kept, and only after a check."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.convert import convert
from pipeline.errors import OutputError, PasswordError
from pipeline.source.passwords import PASSWORD_VARIABLE, Password, Passwords
from pipeline.store.manifest import read_manifest
from pipeline.tools.synth import SynthConfig, write_archive
from pipeline.verify import verify

from conftest import fast_options

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ten_samples(tmp_path_factory) -> Path:
    return write_archive(tmp_path_factory.mktemp("resume") / "SSMSpine_Train.zip", SynthConfig(patients=1, shapes=10))


def _start_conversion(archive: Path, out: Path, password: str | None = None) -> subprocess.Popen:
    """``ssmspine convert`` in its own process group (it and its Dask workers can be killed together).

    One sample per shard and one worker: the run takes long enough to be interrupted midway. A
    password is handed over as users do without a file: in the environment.
    """
    env = {**os.environ, PASSWORD_VARIABLE: password} if password else None
    command = [
        sys.executable,
        "-c",
        # a child inherits an ignored SIGINT from whatever started it (a test runner may ignore it);
        # users' shells do not, so the command runs here as it runs for them: with Python's handler
        "import signal, sys, runpy; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.argv[0] = 'ssmspine'; runpy.run_module('pipeline.cli', run_name='__main__')",
        "convert",
        str(archive),
        "--out",
        str(out),
        "--shard-size",
        "1MB",
        "--workers",
        "1",
        "--no-progress",
    ]
    return subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )


def _wait_for_finished_shards(process: subprocess.Popen, out: Path, count: int, timeout: float = 300) -> None:
    """Poll until ``count`` tasks have recorded their shards (a condition, not a guess of time)."""
    deadline = time.monotonic() + timeout
    while len(list((out / ".progress").glob("train-*.json"))) < count:
        assert process.poll() is None, f"conversion ended before the interruption:\n{process.stdout.read()}"
        assert time.monotonic() < deadline, "no progress records appeared"
        time.sleep(0.05)


@pytest.mark.parametrize(
    "sig, after",
    [(signal.SIGKILL, 1), (signal.SIGKILL, 4), (signal.SIGKILL, 7), (signal.SIGINT, 2), (signal.SIGINT, 6)],
    ids=["SIGKILL-after-1", "SIGKILL-after-4", "SIGKILL-after-7", "SIGINT-after-2", "SIGINT-after-6"],
)
def test_an_interrupted_conversion_resumes_and_verifies(sig, after, ten_samples, tmp_path, dask_scheduler):
    out = tmp_path / "out"
    process = _start_conversion(ten_samples, out)
    _wait_for_finished_shards(process, out, count=after)
    if sig == signal.SIGKILL:
        os.killpg(process.pid, signal.SIGKILL)
    else:
        process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=120)[0]
    _kill_leftovers(process.pid)

    assert not (out / "manifest.json").exists(), f"an interrupted output must not look complete:\n{output}"
    if sig == signal.SIGINT:
        assert process.returncode == 130 and "run the same command again to resume" in output
    finished = sorted(p.name for p in (out / "wds").glob("train-*.tar"))
    assert after <= len(finished) < 10

    summary = convert([ten_samples], out, fast_options(dask_scheduler, shard_bytes=1_000_000))
    assert summary.shards_kept >= after and summary.shards_kept + summary.shards_written == 10
    assert read_manifest(out).splits["train"].samples == 10
    assert not list((out / "wds").glob("*.tmp-*")), "temporary files of the killed run are cleaned up"
    report = verify(out, [ten_samples], scheduler=dask_scheduler)
    assert report.ok and report.samples == 10, report.problems


def test_an_interrupted_encrypted_conversion_resumes_and_verifies(tmp_path, dask_scheduler):
    """Killed after 2 of 6 shards of an AES archive; the resumed run keeps them and needs the password again."""
    password = "resume with this"
    archive = write_archive(
        tmp_path / "SSMSpine_Train.zip", SynthConfig(patients=1, shapes=6, encrypt="aes"), Password(password)
    )
    out = tmp_path / "out"
    process = _start_conversion(archive, out, password)
    _wait_for_finished_shards(process, out, count=2)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=120)
    _kill_leftovers(process.pid)
    assert not (out / "manifest.json").exists()

    with pytest.raises(PasswordError, match="no password was given"):
        convert([archive], out, fast_options(dask_scheduler, shard_bytes=1_000_000))
    passwords = Passwords.for_all(password)
    summary = convert([archive], out, fast_options(dask_scheduler, shard_bytes=1_000_000, passwords=passwords))
    assert summary.shards_kept >= 2 and summary.shards_kept + summary.shards_written == 6
    assert verify(out, [archive], scheduler=dask_scheduler, passwords=passwords).ok
    assert not [p for p in out.rglob("*") if p.is_file() and password.encode() in p.read_bytes()]


def _kill_leftovers(pgid: int) -> None:
    """Whatever of the interrupted run's process group is still alive (nothing, normally)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_a_damaged_kept_shard_is_converted_again(ten_samples, tmp_path, dask_scheduler):
    out = tmp_path / "out"
    options = fast_options(dask_scheduler, shard_bytes=1_000_000)
    convert([ten_samples], out, options)
    shard = out / "wds" / "train-000003.tar"
    shard.write_bytes(shard.read_bytes()[:1000])  # truncated after the fact

    summary = convert([ten_samples], out, options)
    assert not summary.up_to_date and summary.shards_written == 1 and summary.shards_kept == 9
    assert verify(out, [ten_samples], scheduler=dask_scheduler).ok


def test_a_finished_output_of_other_sources_is_refused(ten_samples, tmp_path, dask_scheduler, converted):
    other = tmp_path / "out"
    shutil.copytree(converted, other)
    with pytest.raises(OutputError, match="other sources"):
        convert([ten_samples], other, fast_options(dask_scheduler))
