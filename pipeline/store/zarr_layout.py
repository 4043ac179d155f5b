"""The Zarr layout of an output, in one place: paths, the arrays' metadata and what readers may assume.

``DIR/ssmspine.zarr/<split>/<field>`` holds ``(N, *field shape)`` in the field's stored dtype: the
source dtype, or for ``label`` and the masks a narrower integer one proven lossless
(:mod:`pipeline.narrowing`; docs/FORMAT.md, "Stored dtypes"), the source dtype then named in the
array's attributes. One chunk per sample (random access reads exactly one sample), chunks packed in
shards of ``shard_samples`` samples (few files, each a few hundred MB at most) with a crc32c-checked
index at the end (the shard format: :mod:`pipeline.store.zarr_store`); ``<split>/patient`` and
``<split>/aug`` are int32 arrays naming each sample.
:func:`check_layout` states what the conversion's own shard writer needs and :func:`check_array` what
``verify`` relies on before comparing encoded chunks byte for byte; what the readers' fast path can
read directly is :mod:`pipeline.store.zarr_fast_layout`'s concern.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import zarr

from pipeline.errors import NotFoundError, OutputError, UsageError
from pipeline.io.filesystems import options_for
from pipeline.schema import FIELD_SHAPES, FieldSpec
from pipeline.store.manifest import Manifest, SplitEntry
from pipeline.urls import is_url, safe_url

STORE_NAME = "ssmspine.zarr"

#: The first axis of every array of a split, ``patient`` and ``aug`` included: one name, so that
#: xarray (and any reader of Zarr v3 ``dimension_names``) lines the arrays of a split up by sample.
SAMPLE_DIM = "sample"
#: Arrays of a split naming each sample; every field array lists them in its ``coordinates``
#: attribute (the CF convention xarray decodes), so they open as coordinates along ``sample``.
SAMPLE_COORDINATES = ("patient", "aug")

#: Names of the axes after ``sample`` of the documented fields, shared between fields where they
#: mean the same thing (``bone`` and ``bone_mask`` both have ``vertebra``; every image has ``y, x``).
FIELD_DIMS: dict[str, tuple[str, ...]] = {
    "img": ("y", "x"),
    "img_corrected": ("y", "x"),
    "img_equalized": ("y", "x"),
    "label": ("label_channel", "y", "x"),
    "mask": ("structure", "y", "x"),
    "shape": ("shape_point", "axis"),
    "bone": ("vertebra", "bone_point", "axis"),
    "bone_mask": ("vertebra", "y", "x"),
    "disk": ("disc", "disc_point", "axis"),
    "disk_mask": ("disc", "y", "x"),
}


def dimension_names(field: str, sample_shape: Sequence[int]) -> tuple[str, ...]:
    """The Zarr ``dimension_names`` of a field's array: ``sample``, then the documented names when
    the field has its documented shape, else ``<field>_dim<k>`` (names of their own, so that a
    field of another shape never claims a shared axis of another length)."""
    sample_shape = tuple(int(n) for n in sample_shape)
    if field in FIELD_DIMS and sample_shape == FIELD_SHAPES.get(field):
        return (SAMPLE_DIM, *FIELD_DIMS[field])
    return (SAMPLE_DIM, *(f"{field}_dim{k}" for k in range(len(sample_shape))))


def array_dimensions(array: zarr.Array, field: str) -> tuple[str, ...]:
    """The dimension names an array was written with, or those it would get today (outputs
    written before arrays carried ``dimension_names``)."""
    names = array.metadata.dimension_names
    if names and len(names) == array.ndim and all(names):
        return tuple(str(n) for n in names)
    return dimension_names(field, array.shape[1:])


def store_path(out: str | os.PathLike) -> Path:
    return Path(out) / STORE_NAME


def zarr_location(out: str | os.PathLike, *parts: str) -> str:
    """Where the Zarr store of the output at ``out`` (a directory or a URL) is, or a node in it."""
    root = os.fspath(out)
    if is_url(root):
        return "/".join([root.rstrip("/"), STORE_NAME, *parts])
    return str(Path(root, STORE_NAME, *parts))


def open_store(
    out: str | os.PathLike, storage_options: Mapping | None = None, read_only: bool = True
) -> Path | zarr.storage.FsspecStore:
    """The Zarr store of the output at ``out``: its directory, or for a URL (any fsspec URL)
    zarr-python's own fsspec store, to which the URL's own ``storage_options`` go (its protocol's
    section over the flat keys: :func:`~pipeline.io.filesystems.options_for`; credentials otherwise
    come from where fsspec finds them: the environment, configuration files)."""
    if not is_url(os.fspath(out)):
        return store_path(out)
    url = zarr_location(out)
    try:
        options = options_for(url, storage_options)
        return zarr.storage.FsspecStore.from_url(url, storage_options=options, read_only=read_only)
    except (ValueError, ImportError, TypeError) as exc:  # an unknown scheme, its package missing
        raise UsageError(f"{safe_url(url)}: cannot open this URL with fsspec ({exc})") from exc


def open_array_in(store: str | os.PathLike, split: str, field: str, mode: str = "r") -> zarr.Array:
    """An array of the Zarr store at ``store`` (an output's ``ssmspine.zarr`` or the one its manifest names)."""
    return zarr.open_array(store, path=f"{split}/{field}", mode=mode, zarr_format=3)


def open_array(out: str | os.PathLike, split: str, field: str, mode: str = "r") -> zarr.Array:
    """An array of the output in ``out``, opened with zarr-python."""
    return open_array_in(store_path(out), split, field, mode)


def shard_key(shard_index: int, ndim: int, separator: str = "/") -> str:
    """The key of Zarr shard ``shard_index`` of an ``ndim``-dimensional array sharded along its first
    axis only, under the default chunk key encoding (``c/3/0/0``)."""
    return "c" + separator + separator.join([str(shard_index)] + ["0"] * (ndim - 1))


def shard_file(out: str | os.PathLike, split: str, field: str, shard_index: int, ndim: int) -> Path:
    """The file holding Zarr shard ``shard_index`` of an array of our output."""
    return Path(out) / shard_name(split, field, shard_index, ndim)


def shard_name(split: str, field: str, shard_index: int, ndim: int) -> str:
    """Zarr shard ``shard_index`` of an array, relative to the output's root."""
    return f"{STORE_NAME}/{split}/{field}/{shard_key(shard_index, ndim)}"


def check_layout(array: zarr.Array) -> None:
    """Refuse arrays whose shards :class:`ShardFileWriter` would not write correctly."""
    codecs = array.metadata.to_dict()["codecs"]
    sharding = codecs[0]["configuration"] if len(codecs) == 1 else {}
    inner = [c["name"] for c in sharding.get("codecs", [])]
    index = [c["name"] for c in sharding.get("index_codecs", [])]
    if (codecs[0]["name"], inner, index, sharding.get("index_location")) != (
        "sharding_indexed",
        ["bytes", "blosc"],
        ["bytes", "crc32c"],
        "end",
    ) or any(c.get("configuration", {}).get("endian", "little") != "little" for c in sharding["codecs"]):
        raise OutputError(f"{array.store_path}: unexpected Zarr codecs {codecs}")


def check_array(array: zarr.Array, spec: FieldSpec, rows: int, chunks_per_shard: int) -> None:
    """Refuse an array that does not hold one field as a conversion lays it out: at least ``rows``
    samples of ``spec``, one chunk per sample, ``chunks_per_shard`` chunks per shard, our codecs.

    ``verify`` relies on this before it compares encoded chunks byte for byte with the tar members:
    equal frames in arrays laid out like this decode to equal values in any Zarr reader.
    """
    expected = {
        "sample shape": spec.shape,
        "dtype": spec.numpy_dtype,
        "chunks": (1, *spec.shape),
        "shards": (chunks_per_shard, *spec.shape),
    }
    found = {"sample shape": array.shape[1:], "dtype": array.dtype, "chunks": array.chunks, "shards": array.shards}
    for what, value in expected.items():
        if found[what] != value:
            raise OutputError(f"{array.store_path}: {what} is {found[what]}, the manifest says {value}")
    if array.shape[0] < rows:
        raise OutputError(f"{array.store_path}: {array.shape[0]} rows, the manifest needs {rows}")
    check_layout(array)


class SplitRows:
    """The samples of a split the manifest lists, and the Zarr row of each.

    Rows are ``0..N-1`` unless members were rejected under ``--skip-bad``: their rows stay
    in the arrays, holding the fill value, and no key points at them.
    """

    def __init__(self, entry: SplitEntry, group: zarr.Group) -> None:
        self.keys = list(entry.keys)
        self.rows = np.asarray(entry.rows, dtype=np.int64)
        self.planned = int(group["patient"].shape[0])


def open_split(
    out: str | os.PathLike,
    manifest: Manifest,
    split: str,
    fields: str | Sequence[str] | None,
    storage_options: Mapping | None = None,
) -> tuple[SplitRows, zarr.Group, tuple[str, ...]]:
    """The samples (from the manifest), Zarr group and fields (all by default) of a split, all checked;
    ``out`` is the output's directory or URL (see :func:`open_store`)."""
    if split not in manifest.splits:
        raise NotFoundError(f"{safe_url(os.fspath(out))}: no split {split!r} (has {sorted(manifest.splits)})")
    path = safe_url(zarr_location(out, split))  # for messages: no credentials of the URL
    try:
        group = zarr.open_group(open_store(out, storage_options), path=split, mode="r", zarr_format=3)
    except (OSError, zarr.errors.BaseZarrError) as exc:
        raise OutputError(f"{path}: not a Zarr group ({exc}); is the conversion complete?") from exc
    available = _available_fields(group)
    chosen = available if fields is None else ((fields,) if isinstance(fields, str) else tuple(fields))
    missing = [f for f in chosen if f not in available]
    if missing:
        raise NotFoundError(f"{path}: no field(s) {missing} (has {list(available)})")
    return SplitRows(manifest.splits[split], group), group, chosen


def _available_fields(group: zarr.Group) -> tuple[str, ...]:
    """The split's fields in schema order (the group attribute), else its arrays but patient/aug."""
    names = [f for f in group.attrs.get("fields", []) if f in group]
    return tuple(names or sorted(n for n in group.array_keys() if n not in ("patient", "aug")))
