"""Lazy xarray views of an output for analysis (:func:`open_zarr`): dask arrays chunked along Zarr shards."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from pipeline.schema import BONE_NAMES, DISC_NAMES, LABEL_NAMES
from pipeline.store.location import read_stream_manifest
from pipeline.store.zarr_layout import array_dimensions, open_split
from pipeline.store.zarr_store import SOURCE_DTYPE_ATTRIBUTE
from pipeline.urls import is_url

if TYPE_CHECKING:
    import xarray


#: Labels of the axes that name anatomy (see :data:`pipeline.store.zarr_layout.FIELD_DIMS`).
_DIM_LABELS: dict[str, list[str]] = {
    "structure": [LABEL_NAMES[i] for i in range(1, 12)],
    "vertebra": list(BONE_NAMES),
    "disc": list(DISC_NAMES),
}


def dask_step(shard_samples: int, sample_nbytes: int, limit: int) -> int:
    """Samples per dask chunk: a whole shard if it fits in ``limit`` bytes (one file read per task).

    Otherwise the largest divisor of the shard that fits, so no task reads from two shards,
    unless that is under a quarter of what would fit (tiny tasks; a shard of a prime number
    of samples): then as many samples as fit, and some tasks read the ends of two shards.
    """
    fit = max(1, limit // max(sample_nbytes, 1))
    if shard_samples <= fit:
        return shard_samples
    divisor = max(d for d in range(1, fit + 1) if shard_samples % d == 0)
    return divisor if 4 * divisor >= fit else fit


def open_zarr(
    out: str | os.PathLike,
    split: str | None = None,
    fields: Sequence[str] | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
    compact: bool = False,
) -> xarray.Dataset | dict[str, xarray.Dataset]:
    """Lazy views of the output for analysis: an ``xarray.Dataset`` of ``split``, or a dict of
    them by split when ``split`` is None.

    ``out`` is the output directory or its URL (``file://``, ``s3://``, ``http(s)://`` or any
    fsspec URL), with ``storage_options`` passed to fsspec and zarr-python, as for
    :class:`~pipeline.read.zarr_dataset.ZarrDataset`.

    Each field is a dask array chunked along Zarr shards (see :func:`dask_step`), with the
    coordinates ``key``, ``patient`` and ``aug`` along ``sample``, so per-patient statistics
    such as ``open_zarr(out, "train").img.groupby("patient").mean()`` read each chunk once
    and never hold more than a few shards in memory. Dimensions are the names the arrays carry
    (plain ``xarray.open_zarr`` sees the same; see ``docs/FORMAT.md``). Fields stored narrower
    than their source are widened back lazily (chunk by chunk), unless ``compact``.
    """
    import dask
    import dask.array as da
    import xarray as xr

    limit = dask.utils.parse_bytes(dask.config.get("array.chunk-size"))
    out = os.fspath(out) if is_url(os.fspath(out)) else Path(out)
    manifest = read_stream_manifest(os.fspath(out), storage_options)
    views = {}
    for name in [split] if split is not None else sorted(manifest.splits):
        samples, group, chosen = open_split(out, manifest, name, fields, storage_options)
        data_vars = {}
        for field in chosen:
            array = group[field]
            sample_nbytes = int(np.prod(array.shape[1:], dtype=np.int64)) * np.dtype(array.dtype).itemsize
            step = dask_step((array.shards or array.chunks)[0], sample_nbytes, limit)
            data = da.from_zarr(array, chunks=(step, *array.shape[1:]))
            if not compact and SOURCE_DTYPE_ATTRIBUTE in array.attrs:
                data = data.astype(np.dtype(array.attrs[SOURCE_DTYPE_ATTRIBUTE]))
            if len(samples.rows) != samples.planned:  # rows of rejected members hold no sample
                data = data[samples.rows]
            data_vars[field] = (array_dimensions(array, field), data)
        used = {d for dims, _ in data_vars.values() for d in dims}
        coords = {
            "key": ("sample", samples.keys),
            "patient": ("sample", group["patient"][:][samples.rows]),
            "aug": ("sample", group["aug"][:][samples.rows]),
            **{d: labels for d, labels in _DIM_LABELS.items() if d in used},
        }
        attrs = {"split": name, "label_names": dict(group.attrs.get("label_names", {}))}
        views[name] = xr.Dataset(data_vars, coords=coords, attrs=attrs).set_xindex("key")
    return views[split] if split is not None else views
