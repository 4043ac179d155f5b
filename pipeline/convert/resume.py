"""Resuming and replacing: which recorded shards a re-run keeps, when an output is up to date, and ``--force``.

Everything a task finishes is recorded under ``DIR/.progress``; a re-run keeps recorded shards
whose size and checksum still match and converts only the rest.
"""

from __future__ import annotations

import logging
from typing import Callable

from pipeline.convert.task import GroupTask
from pipeline.errors import OutputError
from pipeline.storage import Storage
from pipeline.store import manifest, progress, zarr_layout
from pipeline.store.manifest import ShardEntry
from pipeline.store.plan import Identity
from pipeline.store.tar_shards import WDS_DIR, shard_file_problem

log = logging.getLogger(__name__)


def reopen_finished(out: Storage) -> None:
    """Turn a finished output that needs repair back into an unfinished one, losing nothing.

    Its shards become progress records and its plan the current plan; only then does the
    manifest go, so the output never claims to be complete while a shard is being rewritten.
    """
    done = manifest.read_manifest(out)
    for entry in done.splits.values():
        for shard in entry.shards:
            progress.record_shard(out, shard)
    progress.write_plan(out, done.plan)
    out.remove(manifest.MANIFEST_NAME)


def kept_shard(task: GroupTask, recorded: ShardEntry | None) -> ShardEntry | None:
    """``recorded`` if it records ``task`` and its shard is still there with that size and checksum."""
    if recorded is None or list(recorded.keys) != [m.key for m in task.members] or recorded.start != task.start:
        return None
    if what := shard_file_problem(task.out, recorded.file, recorded.bytes, recorded.sha256):
        why = what.replace("the manifest", "its progress record")
        log.warning("%s: %s; converting it again", task.out.name(recorded.file), why)
        return None
    return recorded


def is_up_to_date(out: Storage, identity: Identity) -> bool:
    """A finished output of the same conversion whose shards all have their recorded sizes."""
    if not manifest.has_manifest(out):
        return False
    done = manifest.read_manifest(out)
    if done.identity != identity:
        raise OutputError(
            f"{out} holds a finished conversion of other sources or options; "
            "choose another --out, or use --force to replace it"
        )
    return all(out.size(shard.file) == shard.bytes for entry in done.splits.values() for shard in entry.shards)


def replace_other_conversion(out: Storage, identity: Identity) -> None:
    """For ``--force``: remove what a conversion of something else left in ``out`` (and only that)."""
    done = manifest.has_manifest(out)
    planned = progress.has_plan(out)
    other = (done and _identity_of(lambda: manifest.read_manifest(out).identity) != identity) or (
        planned and _identity_of(lambda: progress.read_plan(out).identity) != identity
    )
    if other or (not done and not planned and out.exists(zarr_layout.STORE_NAME)):
        log.warning("%s: replacing the output of another conversion (--force)", out)
        for name in (manifest.MANIFEST_NAME, manifest.REJECTED_NAME):
            out.remove(name)
        for folder in (progress.PROGRESS_DIR, WDS_DIR, zarr_layout.STORE_NAME):
            out.remove_tree(folder)


def _identity_of(read: Callable[[], Identity]) -> Identity | None:
    """The identity a record names, or ``None`` where it cannot be read: ``--force`` replaces that too."""
    try:
        return read()
    except OutputError:
        return None
