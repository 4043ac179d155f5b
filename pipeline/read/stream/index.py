"""Where every sample's requested fields lie in the tar shards: a few numpy arrays built from the manifest.

Small and cheap to pickle to DataLoader workers; checked against the split's keys when built.
Several sources (outputs, splits, subsets: :mod:`pipeline.read.stream.sources`) make one index,
their rows one source after another and their shards numbered across all of them; ``parts`` says
which shards are whose, for the reader that maps a shard back (:mod:`pipeline.read.stream.composite`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple, Sequence

import numpy as np
import torch

from pipeline.errors import NotFoundError, OutputError
from pipeline.read.batch_memory.memory import ArraySpec
from pipeline.read.device import torch_dtypes
from pipeline.store.manifest import Manifest


class IndexPart(NamedTuple):
    """One source's shards in a :class:`SampleIndex`: those numbered ``[first_shard, first_shard + shards)``,
    under ``root``."""

    root: str
    first_shard: int
    shards: int


@dataclass(frozen=True)
class SampleIndex:
    """Where every sample's requested fields lie: small numpy arrays, cheap to pickle to workers."""

    keys: list[str]
    shard: np.ndarray  # (N,) shard number of each sample
    ranges: np.ndarray  # (N, F, 2) offset, size of each requested field's payload
    digests: np.ndarray | None  # (N, F, 16) xxh3-128 of each requested field's bytes
    source_dtypes: tuple[np.dtype, ...]  # per requested field: the dtype whose bytes the digests are of
    files: list[str]
    sizes: list[int]
    sha256s: list[str]  # of each shard, from the manifest: what a shard cache keys and checks its copy by
    parts: tuple[IndexPart, ...] = ()  # whose shards are which (set by combine_indexes)

    def select(self, rows: np.ndarray) -> SampleIndex:
        """The index of ``rows`` only (a subset), in that order; the shards stay as they are."""
        digests = None if self.digests is None else self.digests[rows]
        return replace(
            self, keys=[self.keys[i] for i in rows], shard=self.shard[rows], ranges=self.ranges[rows], digests=digests
        )


def combine_indexes(roots: Sequence[str], indexes: Sequence[SampleIndex]) -> SampleIndex:
    """One index over several sources' (``indexes[i]`` of the output at ``roots[i]``): rows one
    source after another, shards renumbered so that each source's follow the previous ones'."""
    firsts = np.cumsum([0, *(len(index.files) for index in indexes)])
    parts = tuple(IndexPart(root, int(first), len(index.files)) for root, first, index in zip(roots, firsts, indexes))
    if len(indexes) == 1:
        return replace(indexes[0], parts=parts)
    checked = [index.digests is not None for index in indexes]
    return SampleIndex(
        keys=[k for index in indexes for k in index.keys],
        shard=np.concatenate([index.shard + int(first) for index, first in zip(indexes, firsts)]).astype(np.int32),
        ranges=np.concatenate([index.ranges for index in indexes]),
        digests=np.concatenate([index.digests for index in indexes]) if all(checked) else None,  # type: ignore[misc]
        source_dtypes=indexes[0].source_dtypes,
        files=[f for index in indexes for f in index.files],
        sizes=[n for index in indexes for n in index.sizes],
        sha256s=[h for index in indexes for h in index.sha256s],
        parts=parts,
    )


def build_index(manifest: Manifest, split: str, fields: Sequence[str], check_digests: bool) -> SampleIndex:
    entry = manifest.split(split)
    shards = entry.shards
    schema_fields = list(manifest.schema)
    columns = [schema_fields.index(f) for f in fields]
    keys = [k for s in shards for k in s.keys]
    if keys != list(entry.keys):
        raise OutputError(f"the manifest's shards of split {split!r} do not hold its keys in order")
    n, f = len(keys), len(fields)
    shard = np.empty(n, np.int32)
    ranges = np.empty((n, f, 2), np.int64)
    digests = np.empty((n, f, 16), np.uint8) if check_digests else None
    row = 0
    for number, meta in enumerate(shards):
        if len(meta.payloads) != meta.samples:
            raise OutputError(f"{meta.file}: the manifest has no payload ranges for its samples; convert again")
        for i, payload in enumerate(meta.payloads):
            if len(payload) != 2 * len(schema_fields):
                raise OutputError(f"{meta.file}: {meta.keys[i]}: payload ranges do not match the schema")
            shard[row] = number
            ranges[row] = [payload[2 * c : 2 * c + 2] for c in columns]
            if digests is not None:
                for j, field in enumerate(fields):
                    digests[row, j] = np.frombuffer(bytes.fromhex(meta.digests[field][i]), np.uint8)
            row += 1
    return SampleIndex(
        keys=keys,
        shard=shard,
        ranges=ranges,
        digests=digests,
        source_dtypes=tuple(manifest.schema[f].numpy_dtype for f in fields),
        files=[s.file for s in shards],
        sizes=[s.bytes for s in shards],
        sha256s=[s.sha256 for s in shards],
    )


def field_specs(
    manifest: Manifest, fields: Sequence[str] | None, root: str, compact: bool = False
) -> tuple[tuple[str, ...], dict[str, ArraySpec], dict[str, torch.dtype]]:
    """The requested fields (``None``: all) in schema order, which is their order in the tar, with
    each one's sample shape and dtype (the source's, or with ``compact`` the stored one), and its
    torch dtype."""
    schema = manifest.stored_schema if compact else manifest.schema
    chosen = tuple(schema) if fields is None else tuple(fields)
    unknown = [f for f in chosen if f not in schema]
    if unknown or not chosen:
        raise NotFoundError(f"unknown field(s) {unknown}; the output has {list(schema)}")
    chosen = tuple(f for f in schema if f in chosen)
    specs = {f: ArraySpec(schema[f].shape, schema[f].numpy_dtype) for f in chosen}
    try:
        dtypes = torch_dtypes({f: dt for f, (_, dt) in specs.items()})
    except OutputError as exc:
        raise OutputError(f"{root}: {exc}") from exc
    return chosen, specs, dtypes
