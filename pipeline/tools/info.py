"""``ssmspine info``: what an output holds and what it cost.

Why: after a conversion the first question is "is everything there, and what did it cost?".
:func:`info` answers the second half from the manifest and a ``stat`` of the files (no sample is
decoded, so it stays instant on a 25 GB output); :func:`pipeline.verify.consistency.check_output`
answers the first, and ``ssmspine info`` prints both. The result is plain JSON-able data;
:mod:`pipeline.tools.info_text` turns it into text.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from pipeline.schema import FieldSpec
from pipeline.storage import Storage, as_storage
from pipeline.store.manifest import FORMAT, FORMAT_VERSION, Manifest, SplitEntry, read_manifest
from pipeline.tools.tables import ratio


def info(
    out: str | os.PathLike | Storage,
    storage_options: Mapping[str, Any] | None = None,
    manifest: Manifest | None = None,
) -> dict[str, Any]:
    """A JSON-able summary of a finished output: counts, schema, bytes per split and field, shards.

    Sizes are measured on disk: Zarr bytes per field are the files under
    ``ssmspine.zarr/<split>/<field>/``; tar bytes per field are the sums of that field's member
    payloads recorded in the manifest (the rest of a tar — headers and padding — is reported as
    ``wds_overhead_bytes``). Ratios against the source are per split too: a source archive's
    bytes are apportioned to splits by how many of its members each split holds
    (``source_apportioned_by``), exact when each archive feeds one split. Members left out under
    ``--skip-bad`` (``rejected``) and samples with content warnings are counted. ``manifest``:
    the output's manifest, when the caller has read it already.
    """
    out = as_storage(out, storage_options)
    manifest = manifest or read_manifest(out)
    store = manifest.zarr
    sources = [{"name": s.name, "bytes": s.bytes} for s in manifest.sources]
    source_bytes = sum(s["bytes"] for s in sources)
    split_sources, basis = _apportion_sources(manifest)
    splits = {
        split: _split_info(out, store, split, entry, manifest.schema, split_sources[split])
        for split, entry in manifest.splits.items()
    }
    for split, data in splits.items():
        data["rejected"] = sum(1 for r in manifest.rejected if r.split == split)
    zarr_bytes, wds_bytes = out.tree_bytes(store), out.tree_bytes(manifest.wds_dir)
    return {
        "dir": str(out),
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tool_version": manifest.tool_version,
        "created": manifest.created,
        "sources": sources,
        "source_bytes": source_bytes,
        "source_apportioned_by": basis,
        "schema": {
            f: {
                **spec.to_json(),
                "sample_bytes": spec.nbytes,
                "encoding": manifest.encodings[f].describe() if f in manifest.encodings else None,
            }
            for f, spec in manifest.schema.items()
        },
        "samples": sum(s["samples"] for s in splits.values()),
        "patients": sum(s["patients"] for s in splits.values()),
        "rejected": len(manifest.rejected),
        "warnings": sum(s["warnings"] for s in splits.values()),
        "zarr_bytes": zarr_bytes,
        "wds_bytes": wds_bytes,
        "ratio_to_source": {"zarr": ratio(zarr_bytes, source_bytes), "wds": ratio(wds_bytes, source_bytes)},
        "splits": splits,
    }


def _apportion_sources(manifest: Manifest) -> tuple[dict[str, float], str]:
    """Source bytes per split: each archive's bytes shared by its member counts in each split.

    Falls back to sharing the total by sample counts when members name archives the manifest's
    sources do not (an older or hand-edited manifest).
    """
    by_name = {s.name: s.bytes for s in manifest.sources}
    counts: dict[str, dict[str, int]] = {}
    for split, entry in manifest.splits.items():
        for member in entry.members:
            per_split = counts.setdefault(member.archive, {})
            per_split[split] = per_split.get(split, 0) + 1
    splits = manifest.splits
    if counts and set(counts) <= set(by_name):
        shares = dict.fromkeys(splits, 0.0)
        for archive, per_split in counts.items():
            total = sum(per_split.values())
            for split, n in per_split.items():
                shares[split] += by_name[archive] * n / total
        return shares, "members per archive"
    total_samples = sum(e.samples for e in splits.values())
    total_bytes = sum(by_name.values())
    shares = {s: total_bytes * e.samples / total_samples if total_samples else 0.0 for s, e in splits.items()}
    return shares, "samples"


def _split_info(
    out: Storage, store: str, split: str, entry: SplitEntry, schema: Mapping[str, FieldSpec], source_bytes: float
) -> dict[str, Any]:
    """Counts, bytes and shards of one split."""
    samples = entry.samples
    shards = sorted(entry.shards, key=lambda s: s.index)
    fields = list(schema)
    payload_bytes = dict.fromkeys(fields, 0)
    disk_sizes = [out.size(s.file) or 0 for s in shards]
    for shard in shards:
        for payload in shard.payloads:
            for j, field in enumerate(fields):
                if 2 * j + 1 < len(payload):
                    payload_bytes[field] += int(payload[2 * j + 1])
    wds_bytes = sum(disk_sizes)
    zarr_bytes = out.tree_bytes(f"{store}/{split}")
    return {
        "samples": samples,
        "patients": len(set(entry.patient)),
        "patient_ids": sorted(set(entry.patient)),
        "warnings": len(entry.warnings),
        "source_bytes": round(source_bytes),
        "zarr_bytes": zarr_bytes,
        "wds_bytes": wds_bytes,
        "wds_overhead_bytes": wds_bytes - sum(payload_bytes.values()),
        "ratio_to_source": {"zarr": ratio(zarr_bytes, source_bytes), "wds": ratio(wds_bytes, source_bytes)},
        "fields": {
            f: {
                "decoded": samples * spec.nbytes,
                "zarr": out.tree_bytes(f"{store}/{split}/{f}"),
                "wds": payload_bytes[f],
            }
            for f, spec in schema.items()
        },
        "shards": {
            "count": len(shards),
            "files": [s.file for s in shards],
            "samples": [s.samples for s in shards],
            "bytes": disk_sizes,
        },
    }
