"""Reading the samples a picture needs from a finished output: from the tar shards by the byte
ranges the manifest records (:func:`read_wds_records`), or through the Zarr reader
(:func:`read_zarr_records`). Both give the same records, so a picture is a check of either format.
"""

from __future__ import annotations

import os
import tarfile
from typing import Any, Mapping, Sequence

import numpy as np

from pipeline.errors import NotFoundError, OutputError, SampleIndexError
from pipeline.store.location import RangeReader, open_range_reader, read_stream_manifest
from pipeline.store.manifest import Manifest, ShardEntry
from pipeline.store.tar_shards import decode_field, header_member_name, member_name


def pick_split(manifest: Manifest, split: str | None) -> str:
    """``split`` if the output has it (else a :class:`NotFoundError`); None picks ``train``, else the first."""
    if split is None:
        return "train" if "train" in manifest.splits else next(iter(manifest.splits))
    manifest.split(split)
    return split


def read_wds_records(
    out: str | os.PathLike,
    split: str,
    indices: Sequence[int],
    fields: Sequence[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Records of samples ``indices`` (positions in the split's key list) of ``split``, read from
    the tar shards, fetching only ``fields``.

    Uses the payload byte ranges in the manifest: one ranged read per field (of a local file or
    at a URL, as :class:`~pipeline.read.stream.StreamingDataset` reads), and a check that the
    tar header in front of it names that sample's member, so a stale manifest cannot silently
    show another sample.
    """
    root = os.fspath(out)
    manifest = read_stream_manifest(root, storage_options)
    split = pick_split(manifest, split)
    entry = manifest.split(split)
    order = list(manifest.schema)
    fields = order if fields is None else list(fields)
    missing = [f for f in fields if f not in order]
    if missing:
        raise NotFoundError(f"no field(s) {missing} in this output (has {order})")
    shards = sorted(entry.shards, key=lambda s: s.index)
    firsts = np.cumsum([0] + [s.samples for s in shards])  # position of each shard's first sample
    reader = open_range_reader(root, [s.file for s in shards], [s.bytes for s in shards], storage_options)
    try:
        return [_read_record(reader, shards, firsts, position, split, order, fields) for position in indices]
    finally:
        reader.close()


def _read_record(
    reader: RangeReader,
    shards: Sequence[ShardEntry],
    firsts: np.ndarray,
    position: int,
    split: str,
    order: Sequence[str],
    fields: Sequence[str],
) -> tuple[str, dict[str, np.ndarray]]:
    """One record: each field's tar header and payload in one ranged read."""
    i = int(np.searchsorted(firsts, position, side="right")) - 1
    if not 0 <= position < firsts[-1]:
        raise SampleIndexError(f"sample index {position} is out of range for split {split!r} of {firsts[-1]} samples")
    shard, within = shards[i], position - int(firsts[i])
    key, payload = shard.keys[within], shard.payloads[within]
    arrays = {}
    for field in fields:
        j = order.index(field)
        offset, size = int(payload[2 * j]), int(payload[2 * j + 1])
        name = member_name(key, field)
        length = tarfile.BLOCKSIZE + size
        data = bytes(reader.read(i, offset - tarfile.BLOCKSIZE, length, memoryview(bytearray(length))))
        if header_member_name(data[: tarfile.BLOCKSIZE]) != name:
            raise OutputError(
                f"{shard.file}: no member {name} at byte {offset - 512}; the manifest does not match the shard"
            )
        arrays[field] = decode_field(data[tarfile.BLOCKSIZE :], f"{shard.file}: {name}")
    return key, arrays


def read_zarr_records(
    out: str | os.PathLike,
    split: str,
    indices: Sequence[int],
    fields: Sequence[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Records of ``indices`` of ``split`` read through :class:`~pipeline.read.zarr_dataset.ZarrDataset`."""
    from pipeline.read.zarr_dataset import ZarrDataset

    dataset = ZarrDataset(out, split, fields, storage_options=storage_options)
    try:
        return [dataset.read_record(i) for i in indices]
    finally:
        dataset.close()
