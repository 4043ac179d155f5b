"""What an unfinished conversion leaves in ``DIR/.progress``: its plan and a record per finished shard.

Each finished task records its :class:`ShardEntry` in ``.progress/<split>-NNNNNN.json``; a re-run
keeps those shards (after checking size and checksum) and converts only the rest. The folder goes
once the manifest is written. On object storage the records are objects like any other file.
"""

from __future__ import annotations

import json
import os
from typing import Any

from pipeline.errors import OutputError
from pipeline.storage import Storage, as_storage
from pipeline.store.json_fields import JsonObject
from pipeline.store.manifest import ShardEntry
from pipeline.store.plan import Plan

PROGRESS_DIR = ".progress"
PLAN_NAME = f"{PROGRESS_DIR}/plan.json"


def progress_name(split: str, index: int) -> str:
    return f"{PROGRESS_DIR}/{split}-{index:06d}.json"


def read_json(storage: Storage, relative: str) -> Any:
    """A JSON file of ours, or one line naming it."""
    try:
        return json.loads(storage.read_bytes(relative))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OutputError(f"{storage.name(relative)}: not valid JSON ({exc})") from exc


def write_json(storage: Storage, relative: str, data: Any) -> None:
    storage.write_bytes(relative, json.dumps(data, indent=1).encode())


def record_shard(out: Storage | str | os.PathLike, entry: ShardEntry) -> None:
    write_json(as_storage(out), progress_name(entry.split, entry.index), entry.to_json())


def recorded_shards(out: Storage | str | os.PathLike) -> list[ShardEntry]:
    """Shards whose tasks finished since the last manifest was written."""
    storage = as_storage(out)
    names = [n for n in storage.list(PROGRESS_DIR, ".json") if n != PLAN_NAME]
    return [ShardEntry.parse(JsonObject(read_json(storage, n), storage.name(n))) for n in names]


def has_plan(out: Storage | str | os.PathLike) -> bool:
    return as_storage(out).exists(PLAN_NAME)


def read_plan(out: Storage | str | os.PathLike) -> Plan | None:
    """The recorded plan of an unfinished conversion, if there is one."""
    storage = as_storage(out)
    try:
        data = read_json(storage, PLAN_NAME)
    except FileNotFoundError:
        return None
    return Plan.parse(JsonObject(data, storage.name(PLAN_NAME)))


def write_plan(out: Storage | str | os.PathLike, plan: Plan) -> None:
    write_json(as_storage(out), PLAN_NAME, plan.to_json())
