"""Outputs altered so that every file stays well-formed: what checks of values must catch, and only they."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.checksums import file_sha256
from pipeline.store import manifest, tar_shards

from conftest import manifest_json, write_manifest_json


def replace_tar_member(
    out: Path, split: str, key: str, field: str, change: Callable[[np.ndarray], np.ndarray], match: bool = False
) -> manifest.ShardEntry:
    """Rewrite the tar shard holding ``key`` with ``field`` replaced by a validly encoded other array.

    ``match``: update the manifest's record of the shard (size, sha256, payload ranges) to the new
    file, so that only the per-field digests still tell the values apart.
    """
    done = manifest.read_manifest(out)
    shard = next(s for s in done.split(split).shards if key in s.keys)
    path = out / shard.file
    with open(path, "rb") as file:
        samples = list(tar_shards.group_samples(tar_shards.iter_members(file, shard.file)))
    encoding = done.encodings[field]
    writer = tar_shards.ShardWriter(path)
    ranges = []
    for sample in samples:
        payloads = {f: sample[tar_shards.member_suffix(f)] for f in done.schema}
        if sample["__key__"] == key:
            array = tar_shards.decode_field(payloads[field], compact=True)  # as stored (label narrowed)
            source = tar_shards.member_source_dtype(payloads[field])
            payloads[field] = tar_shards.encode_field(change(array), encoding, source)
        ranges.append(writer.add(sample["__key__"], payloads))
    writer.close()
    writer.commit()
    if match:
        data = manifest_json(out)
        record = next(r for r in data["splits"][split]["shards"] if r["file"] == shard.file)
        record["bytes"], record["sha256"], record["payloads"] = path.stat().st_size, file_sha256(path), ranges
        write_manifest_json(out, data)
    return shard
