"""Resuming and replacing: which recorded shards a re-run keeps, when an output is up to date, and ``--force``.

Everything a task finishes is recorded under ``DIR/.progress``; a re-run keeps recorded shards
whose size and checksum still match and converts only the rest.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Callable

from pipeline.convert.task import GroupTask
from pipeline.errors import OutputError
from pipeline.store import manifest, progress, zarr_layout
from pipeline.store.manifest import ShardEntry
from pipeline.store.plan import Identity
from pipeline.store.tar_shards import WDS_DIR, shard_file_problem

log = logging.getLogger(__name__)


def reopen_finished(out: Path, identity: Identity) -> None:
    """Turn a finished output that needs repair back into an unfinished one, losing nothing.

    Its shards become progress records and its plan the current plan; only then does the
    manifest go, so the output never claims to be complete while a shard is being rewritten.
    """
    done = manifest.read_manifest(out)
    for entry in done.splits.values():
        for shard in entry.shards:
            progress.record_shard(out, shard)
    progress.write_plan(out, done.plan)
    manifest.manifest_path(out).unlink()


def kept_shard(task: GroupTask, recorded: ShardEntry | None) -> ShardEntry | None:
    """``recorded`` if it records ``task`` and its shard is still there with that size and checksum."""
    if recorded is None or list(recorded.keys) != [m.key for m in task.members] or recorded.start != task.start:
        return None
    path = Path(task.out) / recorded.file
    if what := shard_file_problem(path, recorded.bytes, recorded.sha256):
        log.warning("%s: %s; converting it again", path, what.replace("the manifest", "its progress record"))
        return None
    return recorded


def is_up_to_date(out: Path, identity: Identity) -> bool:
    """A finished output of the same conversion whose shards all have their recorded sizes."""
    if not manifest.manifest_path(out).exists():
        return False
    done = manifest.read_manifest(out)
    if done.identity != identity:
        raise OutputError(
            f"{out} holds a finished conversion of other sources or options; "
            "choose another --out, or use --force to replace it"
        )
    return all(
        (out / shard.file).is_file() and (out / shard.file).stat().st_size == shard.bytes
        for entry in done.splits.values()
        for shard in entry.shards
    )


def replace_other_conversion(out: Path, identity: Identity) -> None:
    """For ``--force``: remove what a conversion of something else left in ``out`` (and only that)."""
    done = manifest.manifest_path(out).exists()
    planned = progress.plan_path(out).exists()
    other = (done and _identity_of(lambda: manifest.read_manifest(out).identity) != identity) or (
        planned and _identity_of(lambda: progress.read_plan(out).identity) != identity
    )
    if other or (not done and not planned and zarr_layout.store_path(out).exists()):
        log.warning("%s: replacing the output of another conversion (--force)", out)
        for name in (manifest.MANIFEST_NAME, manifest.REJECTED_NAME):
            (out / name).unlink(missing_ok=True)
        for folder in (progress.PROGRESS_DIR, WDS_DIR, zarr_layout.STORE_NAME):
            shutil.rmtree(out / folder, ignore_errors=True)


def _identity_of(read: Callable[[], Identity]) -> Identity | None:
    """The identity a record names, or ``None`` where it cannot be read: ``--force`` replaces that too."""
    try:
        return read()
    except OutputError:
        return None
