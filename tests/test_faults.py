"""Faults during a conversion: a worker killed mid-task, a full disk, someone else's output."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import zipfile
from pathlib import Path

import psutil
import pytest
from distributed import Client

from pipeline.cluster import local_cluster
from pipeline.convert import convert
from pipeline.errors import OutputError, SourceError
from pipeline.store.manifest import read_manifest
from pipeline.store.progress import recorded_shards
from pipeline.tools.synth import SynthConfig, write_archive
from pipeline.verify import verify

from conftest import fast_options

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def eight_samples(tmp_path_factory) -> Path:
    return write_archive(tmp_path_factory.mktemp("faults") / "SSMSpine_Train.zip", SynthConfig(patients=1, shapes=8))


def test_a_worker_killed_mid_task_does_not_stop_the_conversion(eight_samples, tmp_path):
    """A worker is killed while it writes a shard; the scheduler runs that task again in another process.

    A task's temporary files carry its worker's pid (``*.tmp-<pid>``), so the test sees which
    worker is writing which shard. Right after the kill, that shard's temporary tar is still there
    (a killed process removes nothing) and its finished tar is not: the kill hit the task mid-run.
    At the end the shard is finished and recorded, so the task ran again, in a live process.
    """
    out = tmp_path / "out"
    with local_cluster(2) as cluster, Client(cluster) as client:
        workers = set(client.run(os.getpid).values())
        outcome: dict = {}

        def run() -> None:
            try:
                outcome["summary"] = convert(
                    [eight_samples], out, fast_options(cluster.scheduler_address, shard_bytes=1)
                )
            except BaseException as exc:  # reported by the assertion below
                outcome["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        try:
            hit = _kill_a_worker_mid_task(out, workers, thread)
        finally:
            thread.join(timeout=600)
        assert hit is not None, "the conversion finished before a worker could be killed mid-task"
        assert "error" not in outcome, outcome.get("error")
        assert outcome["summary"].samples == 8
        assert (out / hit).is_file(), f"{hit} was written again after its worker died"
        assert hit in [s.file for s in read_manifest(out).splits["train"].shards]
        assert not list(out.rglob("*.tmp-*")), "the dead worker's temporary files are cleaned up"
        assert verify(out, [eight_samples], scheduler=cluster.scheduler_address).ok


def _kill_a_worker_mid_task(out: Path, workers: set[int], conversion: threading.Thread) -> str | None:
    """SIGKILL the first worker seen writing a tar shard, once its death left the shard unfinished.

    Returns the shard (``wds/train-NNNNNN.tar``) whose task was hit, or None if the conversion
    ended first. Polls every 10 ms for files to appear (a condition, not a guess of time).
    """
    pause = threading.Event()
    while conversion.is_alive():
        for temporary in (out / "wds").glob("*.tar.tmp-*"):
            pid = int(temporary.name.rpartition("-")[2])
            if pid not in workers:
                continue
            os.kill(pid, signal.SIGKILL)
            while not _dead(pid):
                pause.wait(0.01)
            finished = temporary.with_name(temporary.name.partition(".tmp-")[0])
            if temporary.exists() and not finished.exists():
                return finished.relative_to(out).as_posix()
            workers.discard(pid)  # it had just finished that shard: try the next one
        pause.wait(0.01)
    return None


def _dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def small_disk(tmp_path):
    """A 12 MB tmpfs: room for the plan and a few shards, not for the whole output."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:  # needs root (or CAP_SYS_ADMIN), as CI and the development machines have
        pytest.fail(
            f"this test needs a real full disk: mounting a 12 MB tmpfs failed "
            f"({result.stderr.decode().strip()}); run the suite as root, as CI does"
        )
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_a_clear_error_and_leaves_no_shard_looking_complete(eight_samples, small_disk, dask_scheduler):
    out = small_disk / "out"
    with pytest.raises(OutputError, match="No space left on device"):
        convert([eight_samples], out, fast_options(dask_scheduler, shard_bytes=1))
    assert not (out / "manifest.json").exists()
    assert not list(out.rglob("*.tmp-*")), "half-written files are removed"
    recorded = {meta.file: meta for meta in recorded_shards(out)}
    for tar in (out / "wds").glob("*.tar"):
        meta = recorded.get(f"wds/{tar.name}")
        assert meta is not None and tar.stat().st_size == meta.bytes, f"{tar.name} looks complete but is not"


def test_another_conversion_in_out_is_refused_unless_forced(eight_samples, converted, tmp_path, dask_scheduler):
    out = tmp_path / "out"
    shutil.copytree(converted, out)
    (out / "notes.txt").write_text("the user's own file")
    with pytest.raises(OutputError, match="other sources or options.*--force"):
        convert([eight_samples], out, fast_options(dask_scheduler))
    assert read_manifest(out).splits["train"].samples == 12, "nothing of the other output was touched"

    summary = convert([eight_samples], out, fast_options(dask_scheduler, force=True))
    assert summary.samples == 8 and set(read_manifest(out).splits) == {"train"}
    assert (out / "notes.txt").read_text() == "the user's own file", "--force removes only conversion outputs"
    assert verify(out, [eight_samples], scheduler=dask_scheduler).ok


def test_an_unreadable_manifest_is_refused_unless_forced(eight_samples, converted, tmp_path, dask_scheduler):
    """A manifest we cannot parse (hand-edited, cut short) names itself; ``--force`` replaces that output too."""
    out = tmp_path / "out"
    shutil.copytree(converted, out)
    (out / "manifest.json").write_text('{"format": "ssmspine-shards", "format_version": 1}')
    with pytest.raises(OutputError, match=r"manifest\.json\.splits: missing"):
        convert([eight_samples], out, fast_options(dask_scheduler))
    summary = convert([eight_samples], out, fast_options(dask_scheduler, force=True))
    assert summary.samples == 8 and verify(out, [eight_samples], scheduler=dask_scheduler).ok


def test_an_unfinished_conversion_of_other_sources_is_refused(eight_samples, train_zip, tmp_path, dask_scheduler):
    broken = tmp_path / "SSMSpine_Train.zip"
    shutil.copy(eight_samples, broken)
    with zipfile.ZipFile(broken, "a") as z:
        z.writestr("Train/p1/aug99.pt", b"")  # the last member: earlier shards finish first
    out = tmp_path / "out"
    with pytest.raises(SourceError, match="aug99.pt: is empty"):
        convert([broken], out, fast_options(dask_scheduler, shard_bytes=1))
    assert recorded_shards(out), "an unfinished output with finished shards"
    with pytest.raises(OutputError, match="unfinished conversion of other sources"):
        convert([train_zip], out, fast_options(dask_scheduler))


def test_a_zarr_shard_altered_after_conversion_is_reported_by_name(converted, tmp_path, dask_scheduler):
    out = tmp_path / "out"
    shutil.copytree(converted, out)
    shard = sorted(p for p in (out / "ssmspine.zarr" / "train" / "mask" / "c").rglob("*") if p.is_file())[0]
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF  # inside the shard index: its CRC-32C no longer matches
    shard.write_bytes(bytes(data))
    report = verify(out, scheduler=dask_scheduler)
    assert not report.ok
    assert [(p.split, p.where, p.what) for p in report.problems] == [
        (
            "train",
            "ssmspine.zarr/train/mask",
            "ssmspine.zarr/train/mask/c/0/0/0/0: the shard index fails its crc32c check; the output is damaged",
        )
    ]
