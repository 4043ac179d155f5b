"""``ssmspine show``: what an output's samples look like, and whether they still line up.

Why: after a conversion the second question is "do the images, labels and landmarks still line
up?". :func:`show` answers it with a PNG of one sample (or a grid of them) read back from the
output, through the Zarr store or the tar shards. The package's modules go one way: ``records``
reads samples, ``pictures`` turns arrays into what is shown, ``figures`` lays the panels out.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from pipeline.errors import NotFoundError, SampleIndexError, SampleKeyError, UsageError
from pipeline.schema import IMAGE_FIELDS
from pipeline.store.location import read_stream_manifest
from pipeline.tools.show.figures import render_grid, render_sample
from pipeline.tools.show.records import pick_split, read_wds_records, read_zarr_records
from pipeline.urls import safe_url

log = logging.getLogger(__name__)

#: Fields a picture uses; ``mask`` stands in for ``label`` when an output has no label field.
PICTURE_FIELDS: tuple[str, ...] = (*IMAGE_FIELDS, "label", "bone", "disk")


def pick_indices(keys: Sequence[str], split: str, key: str | None, index: int | None, grid: int | None) -> list[int]:
    """The indices to draw: one sample, or ``grid`` of them — consecutive from ``key``/``index`` if
    given, else spread evenly over the split so that every patient texture tends to show up."""
    if key is not None and index is not None:
        raise UsageError("give key or index, not both")
    n = len(keys)
    if n == 0:
        raise NotFoundError(f"split {split!r} has no samples")
    if key is not None:
        if key not in keys:
            raise SampleKeyError(f"split {split!r} has no sample {key!r} (keys look like {keys[0]!r})")
        start = list(keys).index(key)
    elif index is not None:
        if not -n <= index < n:
            raise SampleIndexError(f"sample index {index} is out of range for split {split!r} of {n} samples")
        start = index % n
    else:
        start = None
    if grid is None:
        return [start or 0]
    if grid < 1:
        raise UsageError(f"grid must be at least 1, not {grid}")
    if start is not None:
        return list(range(start, min(start + grid, n)))
    return sorted(set(np.linspace(0, n - 1, min(grid, n)).round().astype(int).tolist()))


def picture_fields(schema: Mapping[str, Any]) -> list[str]:
    """The fields of ``schema`` a picture needs (:data:`PICTURE_FIELDS`; the masks if there is no label)."""
    fields = [f for f in PICTURE_FIELDS if f in schema]
    if "label" not in schema:
        fields += [f for f in ("mask", "bone_mask", "disk_mask") if f in schema]
    return fields


def show(
    out: str | os.PathLike,
    split: str | None = None,
    key: str | None = None,
    index: int | None = None,
    *,
    from_wds: bool = False,
    grid: int | None = None,
    path: str | os.PathLike = "sample.png",
    storage_options: Mapping[str, Any] | None = None,
) -> Path:
    """Draw one sample (or ``grid`` samples) of ``split`` to a PNG at ``path``; returns the path.

    Reads through the Zarr store by default, or from the tar shards with ``from_wds`` — the two
    pictures of a sample are identical, which makes this a visual check of either format.
    ``split`` defaults to ``train`` (or the first split); the sample to ``index`` 0. ``out`` is
    a directory or the URL of one (``storage_options`` as for :class:`~pipeline.ZarrDataset`).
    """
    out = os.fspath(out)
    manifest = read_stream_manifest(out, storage_options)
    split = pick_split(manifest, split)
    entry = manifest.split(split)
    keys = entry.keys
    indices = pick_indices(keys, split, key, index, grid)
    fields = picture_fields(manifest.schema)
    reader = read_wds_records if from_wds else read_zarr_records
    records = reader(out, split, indices, fields, storage_options)
    source = "WebDataset tar shards" if from_wds else "the Zarr store"
    log.info("drawing %d sample(s) of %s from %s", len(records), split, source)
    if grid is not None:
        title = f"{safe_url(out)}: split {split}, {len(records)} of {len(keys)} samples, read from {source}"
        return render_grid(records, path, title=title)
    first = indices[0]
    lines = [f"split {split}, sample {first} of {len(keys)}"]
    lines.append(f"patient texture {entry.patient[first]}, virtual shape {entry.aug[first]}")
    return render_sample(records[0], path, title=[*lines, f"read from {source}"])
