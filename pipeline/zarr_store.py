"""The Zarr v3 layout: ``DIR/ssmspine.zarr/<split>/<field>``.

Each field of a split is one array of shape ``(N, *field_shape)`` in the source dtype, with one
chunk per sample (random access reads exactly one sample) packed into shards of ``shard_samples``
samples (few files, each a few hundred MB at most), compressed with the field's measured Blosc
configuration. ``<split>/patient`` and ``<split>/aug`` are int32 arrays naming each sample.

Arrays are created once, by the coordinator, before any task runs: zarr-python loses data when
processes write parts of one shard concurrently, so tasks only ever write whole shards of their
own region.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle

from .codecs import SHUFFLE_NAMES, Encoding
from .schema import OutputError, Schema

STORE_NAME = "ssmspine.zarr"


def store_path(out: str | os.PathLike) -> Path:
    return Path(out) / STORE_NAME


def blosc_codec(encoding: Encoding, itemsize: int) -> BloscCodec:
    """The Zarr codec equivalent to ``encoding`` (same Blosc frame bytes as the tar members)."""
    return BloscCodec(
        typesize=itemsize,
        cname=encoding.cname,
        clevel=encoding.clevel,
        shuffle=BloscShuffle(SHUFFLE_NAMES[encoding.shuffle]),
        blocksize=0,
    )


def create_split(
    out: str | os.PathLike,
    split: str,
    schema: Schema,
    encodings: Mapping[str, Encoding],
    patients: np.ndarray,
    augs: np.ndarray,
    shard_samples: int,
    attributes: Mapping,
) -> None:
    """Create (or, when resuming, reopen unchanged) the arrays of one split.

    An existing array with the same shape, dtype, chunking and codecs is kept as it is, with
    whatever shards are already written; any other difference is an error rather than a
    silent overwrite of earlier output.
    """
    group = zarr.open_group(store_path(out), mode="a", zarr_format=3)
    split_group = group.require_group(split)
    n = len(patients)
    for field, spec in schema.items():
        _require_array(
            split_group,
            field,
            shape=(n, *spec.shape),
            dtype=spec.numpy_dtype,
            chunks=(1, *spec.shape),
            shards=(shard_samples, *spec.shape),
            compressors=blosc_codec(encodings[field], spec.numpy_dtype.itemsize),
        )
    for name, values in (("patient", patients), ("aug", augs)):
        array = _require_array(split_group, name, shape=(n,), dtype=np.dtype("int32"), chunks=(n,), shards=None,
                               compressors=None)  # fmt: skip
        array[:] = np.asarray(values, dtype=np.int32)
    split_group.attrs.update({"samples": n, "shard_samples": shard_samples, **attributes})


def _require_array(group: zarr.Group, name: str, **spec) -> zarr.Array:
    if name in group:
        array = group[name]
        expected = zarr.create_array(store={}, **spec, fill_value=_fill(spec["dtype"]))
        if array.metadata.to_dict() != expected.metadata.to_dict():
            raise OutputError(
                f"{array.store_path}: an existing array with another layout is in the way "
                "(an output of a different conversion?); use a new --out or --force"
            )
        return array
    return group.create_array(name, **spec, fill_value=_fill(spec["dtype"]))


def _fill(dtype: np.dtype):
    return False if dtype == np.bool_ else 0


def open_array(out: str | os.PathLike, split: str, field: str, mode: str = "r") -> zarr.Array:
    return zarr.open_array(store_path(out), path=f"{split}/{field}", mode=mode, zarr_format=3)


def write_region(out: str | os.PathLike, split: str, field: str, start: int, data: np.ndarray) -> None:
    """Write samples ``start .. start+len(data)``: whole shards only (see module docstring)."""
    open_array(out, split, field, mode="r+")[start : start + len(data)] = data


def read_region(out: str | os.PathLike, split: str, field: str, start: int, stop: int) -> np.ndarray:
    return open_array(out, split, field)[start:stop]


def shard_file(out: str | os.PathLike, split: str, field: str, shard_index: int, ndim: int) -> Path:
    """The file holding Zarr shard ``shard_index`` of an array (default chunk key encoding)."""
    return store_path(out) / split / field / "c" / str(shard_index) / Path(*["0"] * (ndim - 1))
