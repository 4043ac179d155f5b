"""What an unfinished conversion leaves in ``DIR/.progress``: its plan and a record per finished shard.

Each finished task records its :class:`ShardEntry` in ``.progress/<split>-NNNNNN.json``; a re-run
keeps those shards (after checking size and checksum) and converts only the rest. The folder goes
once the manifest is written.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.store.json_fields import JsonObject
from pipeline.store.manifest import ShardEntry, read_json, write_json_atomic
from pipeline.store.plan import Plan

PROGRESS_DIR = ".progress"
PLAN_NAME = "plan.json"


def progress_path(out: str | os.PathLike, split: str, index: int) -> Path:
    return Path(out) / PROGRESS_DIR / f"{split}-{index:06d}.json"


def plan_path(out: str | os.PathLike) -> Path:
    return Path(out) / PROGRESS_DIR / PLAN_NAME


def record_shard(out: str | os.PathLike, entry: ShardEntry) -> None:
    write_json_atomic(progress_path(out, entry.split, entry.index), entry.to_json())


def recorded_shards(out: str | os.PathLike) -> list[ShardEntry]:
    """Shards whose tasks finished since the last manifest was written."""
    folder = Path(out) / PROGRESS_DIR
    return [ShardEntry.parse(JsonObject(read_json(p), str(p))) for p in sorted(folder.glob("*-*.json"))]


def read_plan(out: str | os.PathLike) -> Plan | None:
    """The recorded plan of an unfinished conversion, if there is one."""
    path = plan_path(out)
    return Plan.parse(JsonObject(read_json(path), str(path))) if path.exists() else None


def write_plan(out: str | os.PathLike, plan: Plan) -> None:
    write_json_atomic(plan_path(out), plan.to_json())
