"""What a :class:`~pipeline.read.stream.StreamingDataset` streams: one output's split, or several sources mixed.

A :class:`Source` is one output's split, or a subset of it (:mod:`pipeline.read.subsets`), with a
weight. Opening the sources (:func:`open_sources`) reads each manifest once, checks that they hold
the requested fields alike (shapes and dtypes, as stored and as converted from), and builds the
one index (:func:`~pipeline.read.stream.index.combine_indexes`), the mixture that draws from it
(:mod:`pipeline.read.stream.mixing`) and the identity a saved state must match
(:class:`~pipeline.read.stream.state.OrderIdentity`): for one whole source exactly what a dataset
without sources had, so states saved before still load.

Why typed records and not a mapping of roots to weights: the same output may be mixed twice (two
splits, or two subsets of one split), and a record says which option is which.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import torch

from pipeline.errors import UsageError
from pipeline.read.batch_memory.memory import ArraySpec
from pipeline.read.stream.index import SampleIndex, build_index, combine_indexes, field_specs
from pipeline.read.stream.mixing import Mixture
from pipeline.read.stream.state import OrderIdentity
from pipeline.read.subsets import Predicate, Subset
from pipeline.store.location import read_stream_manifest
from pipeline.urls import is_url, safe_url


@dataclass(frozen=True)
class Source:
    """One split of the output at ``root`` (a directory or URL), or its subset, mixed with ``weight``.

    Weights are relative: source ``s`` fills ``epoch_size · weight_s / Σ weights`` positions of each
    epoch. Without weights (all ``None``) every source counts as its size: each sample once per epoch.
    ``patients``, ``keys`` and ``where`` keep part of the split (:class:`pipeline.read.subsets.Subset`).
    """

    root: str | os.PathLike
    split: str = "train"
    weight: float | None = None
    patients: int | Iterable[int] | None = None
    keys: str | Iterable[str] | None = None
    where: Predicate | None = None


class Opened(NamedTuple):
    """What the dataset keeps of its sources once opened."""

    roots: tuple[str, ...]
    fields: tuple[str, ...]
    specs: dict[str, ArraySpec]
    torch_dtypes: dict[str, torch.dtype]
    source_dtypes: dict[str, torch.dtype]
    index: SampleIndex
    mixture: Mixture
    identity: OrderIdentity


def sources_of(
    root: str | os.PathLike | Source | Sequence[Source],
    split: str | None,
    patients: int | Iterable[int] | None,
    keys: str | Iterable[str] | None,
    where: Predicate | None,
) -> tuple[Source, ...]:
    """The dataset's arguments as sources: one output's split (default ``train``) and subset, or the
    sources given, which then carry their own split and subset."""
    if isinstance(root, (str, os.PathLike)):
        return (Source(root, "train" if split is None else split, None, patients, keys, where),)
    given = [root] if isinstance(root, Source) else list(root) if isinstance(root, Sequence) else []
    if not given or not all(isinstance(s, Source) for s in given):
        raise UsageError(f"root: give an output (a path or URL) or a sequence of pipeline.Source, got {root!r}")
    if split is not None:
        raise UsageError(f"split={split!r} is for one output: give each Source its split")
    if not (patients is None and keys is None and where is None):
        raise UsageError("patients=, keys= and where= are for one output: give each Source its subset")
    return tuple(given)


def normalized_root(root: str | os.PathLike) -> str:
    """A URL as given, a local directory as its plain path."""
    text = os.fspath(root)
    return text if is_url(text) else str(Path(text))


def open_sources(
    sources: Sequence[Source],
    fields: Sequence[str] | None,
    compact: bool,
    check_digests: bool,
    storage_options: Mapping[str, Any],
    epoch_size: int | None,
    seed: int,
    shuffle: bool,
) -> Opened:
    """Read each source's manifest, check the fields agree, and build the index, mixture and identity."""
    roots, names, indexes = [], [], []
    chosen: tuple[str, ...] = ()
    specs: dict[str, ArraySpec] = {}
    dtypes: dict[str, torch.dtype] = {}
    wide: dict[str, torch.dtype] = {}
    for source in sources:
        root = normalized_root(source.root)
        name = f"{safe_url(root)} ({source.split})"
        _check_weight(source.weight, name)
        manifest = read_stream_manifest(root, storage_options)
        if not roots:
            chosen, specs, dtypes = field_specs(manifest, fields, root, compact)
            wide = field_specs(manifest, chosen, root)[2]
        else:
            missing = [f for f in chosen if f not in manifest.schema]
            if missing:
                raise UsageError(f"{name} has no field(s) {missing} that {names[0]} has: they cannot be mixed")
            here = field_specs(manifest, chosen, root, compact)
            if (here[0], here[1], field_specs(manifest, chosen, root)[2]) != (chosen, specs, wide):
                differ = [f for f in chosen if here[1][f] != specs[f]] or list(chosen)
                raise UsageError(f"{names[0]} and {name} hold {differ} in other shapes or dtypes: they cannot be mixed")
        entry = manifest.split(source.split)
        rows = Subset.of(source.patients, source.keys, source.where).positions(entry, source.split, name)
        if not len(rows):
            raise UsageError(f"{name}: has no samples")
        index = build_index(manifest, source.split, chosen, check_digests)
        roots.append(root)
        names.append(name)
        indexes.append(index if len(rows) == len(index.keys) else index.select(rows))
    index = combine_indexes(roots, indexes)
    mixture = Mixture.of([len(i.keys) for i in indexes], [s.weight for s in sources], epoch_size)
    splits = [s.split for s in sources]
    digest = hashlib.sha256("\n".join(index.keys).encode()).hexdigest()[:16]
    identity = OrderIdentity(
        splits[0] if len(splits) == 1 else "+".join(splits),
        mixture.samples,
        digest,
        seed,
        shuffle,
        mixture.describe(splits),
    )
    return Opened(tuple(roots), chosen, specs, dtypes, wide, index, mixture, identity)


def _check_weight(weight: Any, name: str) -> None:
    if weight is None:
        return
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
        raise UsageError(f"{name}: weight must be a positive number, got {weight!r}")
