"""Resuming and replacing: which recorded shards a re-run keeps, when an output is up to date, and ``--force``.

Everything a task finishes is recorded under ``DIR/.progress``; a re-run keeps recorded shards
whose size and checksum still match and converts only the rest.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from pipeline.convert.plan import PLAN_KEYS
from pipeline.convert.task import GroupTask
from pipeline.errors import OutputError
from pipeline.store import manifest, zarr_layout
from pipeline.store.manifest import ShardMeta
from pipeline.store.tar_shards import WDS_DIR, shard_file_problem

log = logging.getLogger(__name__)


def reopen_finished(out: Path, identity: dict) -> None:
    """Turn a finished output that needs repair back into an unfinished one, losing nothing.

    Its shards become progress records and its plan the current plan; only then does the
    manifest go, so the output never claims to be complete while a shard is being rewritten.
    """
    done = manifest.read_manifest(out)
    for split in done["splits"]:
        for meta in manifest.shards_of(done, split):
            manifest.record_shard(out, meta)
    manifest.write_json_atomic(manifest.plan_path(out), {"identity": identity, **{k: done[k] for k in PLAN_KEYS}})
    manifest.manifest_path(out).unlink()


def kept_shard(task: GroupTask, meta: ShardMeta | None) -> ShardMeta | None:
    """``meta`` if it records ``task`` and its shard is still there with that size and checksum."""
    if meta is None or meta.keys != [m.key for m in task.members] or meta.start != task.start:
        return None
    path = Path(task.out) / meta.file
    if what := shard_file_problem(path, meta.bytes, meta.sha256):
        log.warning("%s: %s; converting it again", path, what.replace("the manifest", "its progress record"))
        return None
    return meta


def is_up_to_date(out: Path, identity: dict) -> bool:
    """A finished output of the same conversion whose shards all have their recorded sizes."""
    if not manifest.manifest_path(out).exists():
        return False
    done = manifest.read_manifest(out)
    if done["identity"] != identity:
        raise OutputError(
            f"{out} holds a finished conversion of other sources or options; "
            "choose another --out, or use --force to replace it"
        )
    return all(
        (out / shard["file"]).is_file() and (out / shard["file"]).stat().st_size == shard["bytes"]
        for info in done["splits"].values()
        for shard in info["shards"]
    )


def replace_other_conversion(out: Path, identity: dict) -> None:
    """For ``--force``: remove what a conversion of something else left in ``out`` (and only that)."""
    plan = manifest.plan_path(out)
    done = manifest.manifest_path(out)
    other = (done.exists() and manifest.read_manifest(out).get("identity") != identity) or (
        plan.exists() and manifest.read_json(plan).get("identity") != identity
    )
    if other or (not done.exists() and not plan.exists() and zarr_layout.store_path(out).exists()):
        log.warning("%s: replacing the output of another conversion (--force)", out)
        for name in (manifest.MANIFEST_NAME, manifest.REJECTED_NAME):
            (out / name).unlink(missing_ok=True)
        for folder in (manifest.PROGRESS_DIR, WDS_DIR, zarr_layout.STORE_NAME):
            shutil.rmtree(out / folder, ignore_errors=True)
