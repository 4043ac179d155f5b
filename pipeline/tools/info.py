"""``ssmspine info``: what an output holds, what it cost, and whether its manifest checks out.

Why: after a conversion the first question is "is everything there, and what did it cost?".
:func:`info` answers it from the manifest and a ``stat`` of the files (no sample is decoded, so it
stays instant on a 25 GB output unless ``check=True`` asks for checksums). Its result is plain
JSON-able data; :mod:`pipeline.tools.info_text` turns it into the text ``ssmspine info`` prints.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from pipeline.schema import FieldSpec
from pipeline.sizes import tree_bytes
from pipeline.store import zarr_layout
from pipeline.store.codecs import Encoding
from pipeline.store.manifest import read_manifest
from pipeline.store.tar_shards import shard_file_problem
from pipeline.store.zarr_layout import STORE_NAME
from pipeline.tools.tables import ratio


def info(out: str | os.PathLike, check: bool = False) -> dict[str, Any]:
    """A JSON-able summary of a finished output, and whether its manifest checks out.

    Sizes are measured on disk: Zarr bytes per field are the files under
    ``ssmspine.zarr/<split>/<field>/``; tar bytes per field are the sums of that field's member
    payloads recorded in the manifest (the rest of a tar — headers and padding — is reported as
    ``wds_overhead_bytes``). Ratios against the source are per split too: a source archive's
    bytes are apportioned to splits by how many of its members each split holds
    (``source_apportioned_by``), exact when each archive feeds one split.

    The manifest check is fast by default (every shard and array is there, with its recorded
    size, sample count and byte ranges); ``check=True`` adds the sha256 of every tar shard.
    Members left out under ``--skip-bad`` (``rejected``) and samples converted with content
    warnings are counted, not treated as problems: the conversion reported them already.
    """
    out = Path(out)
    manifest = read_manifest(out)
    schema = {f: FieldSpec.from_json(s) for f, s in manifest["schema"].items()}
    store = out / manifest.get("zarr", STORE_NAME)
    wds_dir = out / manifest.get("wds", {}).get("dir", "wds")
    sources = [{"name": s["name"], "bytes": int(s["bytes"])} for s in manifest["sources"]]
    source_bytes = sum(s["bytes"] for s in sources)
    split_sources, basis = _apportion_sources(manifest)
    problems: list[str] = []
    group = manifest.get("group_samples")
    splits = {
        split: _split_info(out, store, split, entry, schema, split_sources[split], group, check, problems)
        for split, entry in manifest["splits"].items()
    }
    rejected = manifest.get("rejected", [])
    for split, data in splits.items():
        data["rejected"] = sum(1 for r in rejected if r.get("split") == split)
    listed = {s["file"] for entry in manifest["splits"].values() for s in entry["shards"]}
    for path in sorted(wds_dir.glob("*.tar")):
        name = path.relative_to(out).as_posix()
        if name not in listed:
            problems.append(f"{name}: a tar shard the manifest does not list")
    zarr_bytes, wds_bytes = tree_bytes(store), tree_bytes(wds_dir)
    encodings = manifest.get("encodings", {})
    return {
        "dir": str(out),
        "format": manifest["format"],
        "format_version": manifest["format_version"],
        "tool_version": manifest.get("tool_version"),
        "created": manifest.get("created"),
        "sources": sources,
        "source_bytes": source_bytes,
        "source_apportioned_by": basis,
        "schema": {
            f: {
                **spec.to_json(),
                "sample_bytes": spec.nbytes,
                "encoding": Encoding.from_json(encodings[f]).describe() if f in encodings else None,
            }
            for f, spec in schema.items()
        },
        "samples": sum(s["samples"] for s in splits.values()),
        "patients": sum(s["patients"] for s in splits.values()),
        "rejected": len(rejected),
        "warnings": sum(s["warnings"] for s in splits.values()),
        "zarr_bytes": zarr_bytes,
        "wds_bytes": wds_bytes,
        "ratio_to_source": {"zarr": ratio(zarr_bytes, source_bytes), "wds": ratio(wds_bytes, source_bytes)},
        "splits": splits,
        "check": {
            "ok": not problems,
            "checksums": check,
            "shards": sum(s["shards"]["count"] for s in splits.values()),
            "problems": problems,
        },
    }


def _apportion_sources(manifest: Mapping[str, Any]) -> tuple[dict[str, float], str]:
    """Source bytes per split: each archive's bytes shared by its member counts in each split.

    Falls back to sharing the total by sample counts when members name archives the manifest's
    sources do not (an older or hand-edited manifest).
    """
    by_name = {s["name"]: int(s["bytes"]) for s in manifest["sources"]}
    counts: dict[str, dict[str, int]] = {}
    for split, entry in manifest["splits"].items():
        for member in entry.get("members", []):
            per_split = counts.setdefault(member["archive"], {})
            per_split[split] = per_split.get(split, 0) + 1
    splits = manifest["splits"]
    if counts and set(counts) <= set(by_name):
        shares = dict.fromkeys(splits, 0.0)
        for archive, per_split in counts.items():
            total = sum(per_split.values())
            for split, n in per_split.items():
                shares[split] += by_name[archive] * n / total
        return shares, "members per archive"
    total_samples = sum(e["samples"] for e in splits.values())
    total_bytes = sum(by_name.values())
    shares = {s: total_bytes * e["samples"] / total_samples if total_samples else 0.0 for s, e in splits.items()}
    return shares, "samples"


def _split_info(
    out: Path,
    store: Path,
    split: str,
    entry: Mapping[str, Any],
    schema: Mapping[str, FieldSpec],
    source_bytes: float,
    group: int | None,
    check: bool,
    problems: list[str],
) -> dict[str, Any]:
    """Counts, bytes and shards of one split; appends what does not check out to ``problems``."""
    samples = int(entry["samples"])
    shards = sorted(entry["shards"], key=lambda s: s["index"])
    fields = list(schema)
    _check_split_lists(split, entry, shards, group, problems)
    # a member rejected by its task keeps its (empty) Zarr row; one rejected when listing has none
    zarr_rows = samples + sum(len(s.get("rejected", [])) for s in shards)
    payload_bytes = dict.fromkeys(fields, 0)
    disk_sizes = []
    for shard in shards:
        size = _check_shard(out, shard, len(fields), check, problems)
        disk_sizes.append(size)
        for payload in shard.get("payloads", []):
            for j, field in enumerate(fields):
                if 2 * j + 1 < len(payload):
                    payload_bytes[field] += int(payload[2 * j + 1])
    for field, spec in schema.items():
        _check_zarr_array(store, split, field, (zarr_rows, *spec.shape), spec, problems)
    wds_bytes = sum(s for s in disk_sizes if s is not None)
    zarr_bytes = tree_bytes(store / split)
    return {
        "samples": samples,
        "patients": len(set(entry.get("patient", []))),
        "patient_ids": sorted(set(entry.get("patient", []))),
        "warnings": len(entry.get("warnings", {})),
        "source_bytes": round(source_bytes),
        "zarr_bytes": zarr_bytes,
        "wds_bytes": wds_bytes,
        "wds_overhead_bytes": wds_bytes - sum(payload_bytes.values()),
        "ratio_to_source": {"zarr": ratio(zarr_bytes, source_bytes), "wds": ratio(wds_bytes, source_bytes)},
        "fields": {
            f: {"decoded": samples * spec.nbytes, "zarr": tree_bytes(store / split / f), "wds": payload_bytes[f]}
            for f, spec in schema.items()
        },
        "shards": {
            "count": len(shards),
            "files": [s["file"] for s in shards],
            "samples": [len(s["keys"]) for s in shards],
            "bytes": [s if s is not None else 0 for s in disk_sizes],
        },
    }


def _check_split_lists(
    split: str, entry: Mapping[str, Any], shards: Sequence[Mapping], group: int | None, problems: list[str]
) -> None:
    """The split's per-sample lists agree with each other and with its shards, in order.

    Shard ``i`` covers Zarr rows ``i * group`` on; each sample's row (``rows``, where the
    manifest has them) lies in its shard's range, so rejected members leave gaps, not shifts.
    """
    keys = list(entry["keys"])
    if int(entry["samples"]) != len(keys):
        problems.append(f"split {split}: {entry['samples']} samples, but {len(keys)} keys")
    for name in ("patient", "aug", "members", "rows"):
        if name in entry and len(entry[name]) != len(keys):
            problems.append(f"split {split}: {len(entry[name])} {name} entries for {len(keys)} keys")
    position = 0
    for i, shard in enumerate(shards):
        n, start = len(shard["keys"]), shard["start"]
        if shard["index"] != i:
            problems.append(f"{shard['file']}: shard index {shard['index']}, expected {i} (a shard is missing)")
        expected_start = i * group if group else position
        if start != expected_start:
            problems.append(f"{shard['file']}: starts at row {start}, expected {expected_start}")
        rows = shard.get("rows") or list(range(start, start + n))
        end = start + (group or n)
        if len(rows) != n or any(not start <= r < end for r in rows) or rows != sorted(set(rows)):
            problems.append(f"{shard['file']}: its samples' rows are not {n} distinct rows in {start}..{end - 1}")
        if list(shard["keys"]) != keys[position : position + n]:
            problems.append(f"{shard['file']}: its keys are not the split's keys {position}..{position + n - 1}")
        position += n
    if position != len(keys):
        problems.append(f"split {split}: its shards hold {position} samples, the split lists {len(keys)}")


def _check_shard(out: Path, shard: Mapping[str, Any], n_fields: int, check: bool, problems: list[str]) -> int | None:
    """The shard's size on disk (None if missing), after checking it against its record."""
    path = out / shard["file"]
    what = shard_file_problem(path, shard["bytes"], shard["sha256"] if check else None)
    if what:
        problems.append(f"{shard['file']}: {what}")
    if what == "missing":
        return None
    size = path.stat().st_size
    payloads = shard.get("payloads", [])
    if len(payloads) != len(shard["keys"]):
        problems.append(f"{shard['file']}: {len(payloads)} payload records for {len(shard['keys'])} samples")
    for key, payload in zip(shard["keys"], payloads):
        ends = [int(payload[i]) + int(payload[i + 1]) for i in range(0, len(payload) - 1, 2)]
        if len(payload) != 2 * n_fields or max(ends, default=0) > size:
            problems.append(f"{shard['file']}: the payload byte ranges of {key} do not fit the schema or the file")
            break
    return size


def _check_zarr_array(
    store: Path, split: str, field: str, shape: tuple[int, ...], spec: FieldSpec, problems: list[str]
) -> None:
    """The array opens (through zarr-python, which reads its ``zarr.json``) with the manifest's shape and dtype."""
    name = f"{STORE_NAME}/{split}/{field}"
    try:
        array = zarr_layout.open_array_in(store, split, field)
    except Exception as exc:  # zarr-python raises many types for missing or damaged metadata
        problems.append(f"{name}: no readable zarr.json ({exc.__class__.__name__})")
        return
    if tuple(array.shape) != shape:
        problems.append(f"{name}: shape {tuple(array.shape)}, the manifest says {shape}")
    if np.dtype(array.dtype).newbyteorder("=") != spec.numpy_dtype.newbyteorder("="):
        problems.append(f"{name}: data type {array.dtype}, the manifest says {spec.dtype}")
