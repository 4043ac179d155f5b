"""Whether an output agrees with its manifest, without decoding a sample: the check ``ssmspine info`` shows.

Fast by default (every shard and array is there with its recorded size, sample count, rows and
byte ranges, and no tar shard is there that the manifest does not list); ``checksums=True`` adds
the sha256 of every tar shard. The record-level shape of the manifest (list lengths, types) is
checked by its parser already; what is checked here is how the records agree with each other and
with the files. ``verify`` is the bit-exact check; this one is instant on a 25 GB output.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from pipeline.schema import FieldSpec
from pipeline.storage import Storage, as_storage
from pipeline.store import zarr_layout
from pipeline.store.manifest import Manifest, ShardEntry, SplitEntry, read_manifest
from pipeline.store.tar_shards import MISSING, shard_file_problem


@dataclass(frozen=True)
class ManifestCheck:
    """What :func:`check_output` found: no ``problems`` means the output agrees with its manifest."""

    checksums: bool  # whether the sha256 of every tar shard was compared
    shards: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {"ok": self.ok, "checksums": self.checksums, "shards": self.shards, "problems": list(self.problems)}


def check_output(
    out: str | os.PathLike | Storage,
    checksums: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    manifest: Manifest | None = None,
) -> ManifestCheck:
    """Check a finished output (a directory or any fsspec URL) against its manifest (see the module
    docstring); ``manifest``: the output's manifest, when the caller has read it already."""
    out = as_storage(out, storage_options)
    manifest = manifest or read_manifest(out)
    store = zarr_layout.open_store(out.root, out.storage_options)
    problems: list[str] = []
    for split, entry in manifest.splits.items():
        _check_split_lists(split, entry, manifest.plan.group_samples, problems)
        for shard in entry.shards:
            _check_shard(out, shard, len(manifest.schema), checksums, problems)
        # a member rejected by its task keeps its (empty) Zarr row; one rejected when listing has none
        zarr_rows = entry.samples + sum(len(s.rejected) for s in entry.shards)
        for field, spec in manifest.stored_schema.items():
            _check_zarr_array(store, split, field, (zarr_rows, *spec.shape), spec, problems)
    _check_unlisted_tars(out, manifest, problems)
    shards = sum(len(entry.shards) for entry in manifest.splits.values())
    return ManifestCheck(checksums=checksums, shards=shards, problems=tuple(problems))


def _check_split_lists(split: str, entry: SplitEntry, group: int, problems: list[str]) -> None:
    """The split's shards hold its keys in order, each shard where its index puts it.

    Shard ``i`` covers Zarr rows ``i * group`` on; each sample's row lies in its shard's range, so
    rejected members leave gaps, not shifts.
    """
    keys = list(entry.keys)
    position = 0
    for i, shard in enumerate(sorted(entry.shards, key=lambda s: s.index)):
        n, start = shard.samples, shard.start
        if shard.index != i:
            problems.append(f"{shard.file}: shard index {shard.index}, expected {i} (a shard is missing)")
        if start != i * group:
            problems.append(f"{shard.file}: starts at row {start}, expected {i * group}")
        rows = list(shard.rows)
        end = start + group
        if any(not start <= r < end for r in rows) or rows != sorted(set(rows)):
            problems.append(f"{shard.file}: its samples' rows are not {n} distinct rows in {start}..{end - 1}")
        if list(shard.keys) != keys[position : position + n]:
            problems.append(f"{shard.file}: its keys are not the split's keys {position}..{position + n - 1}")
        position += n
    if list(entry.rows) != [row for shard in entry.shards for row in shard.rows]:
        problems.append(f"split {split}: its rows are not those of its shards")


def _check_shard(out: Storage, shard: ShardEntry, n_fields: int, checksums: bool, problems: list[str]) -> None:
    """The shard file against its record (one size query, on a bucket one request), and its
    payload records against the schema and the size the manifest records."""
    what = shard_file_problem(out, shard.file, shard.bytes, shard.sha256 if checksums else None)
    if what:
        problems.append(f"{shard.file}: {what}")
    if what == MISSING:
        return
    if len(shard.payloads) != shard.samples:
        problems.append(f"{shard.file}: {len(shard.payloads)} payload records for {shard.samples} samples")
    for key, payload in zip(shard.keys, shard.payloads):
        ends = [int(payload[i]) + int(payload[i + 1]) for i in range(0, len(payload) - 1, 2)]
        if len(payload) != 2 * n_fields or max(ends, default=0) > shard.bytes:
            problems.append(f"{shard.file}: the payload byte ranges of {key} do not fit the schema or the file")
            break


def _check_zarr_array(
    store: Any, split: str, field: str, shape: tuple[int, ...], spec: FieldSpec, problems: list[str]
) -> None:
    """The array opens (through zarr-python, which reads its ``zarr.json``) with the manifest's shape and dtype."""
    name = f"{zarr_layout.STORE_NAME}/{split}/{field}"
    try:
        array = zarr_layout.open_array_in(store, split, field)
    except Exception as exc:  # zarr-python raises many types for missing or damaged metadata
        problems.append(f"{name}: no readable zarr.json ({exc.__class__.__name__})")
        return
    if tuple(array.shape) != shape:
        problems.append(f"{name}: shape {tuple(array.shape)}, the manifest says {shape}")
    if np.dtype(array.dtype).newbyteorder("=") != spec.numpy_dtype.newbyteorder("="):
        problems.append(f"{name}: data type {array.dtype}, the manifest says {spec.dtype}")


def _check_unlisted_tars(out: Storage, manifest: Manifest, problems: list[str]) -> None:
    listed = {shard.file for entry in manifest.splits.values() for shard in entry.shards}
    for name in out.list(manifest.wds_dir, ".tar"):
        if name not in listed:
            problems.append(f"{name}: a tar shard the manifest does not list")
