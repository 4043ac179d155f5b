"""What the readers' fast path can read of a Zarr array directly, and where the bytes of each sample are.

The fast path (:mod:`pipeline.read.zarr_fast`) is an optimisation: :func:`fast_layout` accepts
only arrays whose metadata it fully recognises (one chunk per sample, in shards with an index
the fast path knows how to read), and everything else is left to zarr-python.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import zarr

from pipeline.store.zarr_layout import shard_key
from pipeline.urls import is_url

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChunkLayout:
    """Where the bytes of sample ``i`` of one array are, for arrays the fast path can read.

    One inner chunk per sample, ``shard_samples`` inner chunks per shard file, each chunk the
    sample's little-endian bytes, optionally as one Blosc frame (which records its own
    typesize and shuffle, so any Blosc configuration decodes the same way).

    ``directory`` is a local path, or the URL of an array in object storage (or any fsspec
    URL): plain data either way, so a layout pickles into DataLoader workers without a handle.
    """

    directory: str
    shape: tuple[int, ...]
    dtype: str
    fill_value: Any
    shard_samples: int
    separator: str
    index_at_end: bool
    index_crc: bool
    blosc: bool

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    @property
    def sample_nbytes(self) -> int:
        return int(np.prod(self.sample_shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    @property
    def remote(self) -> bool:
        """Whether the shards are at a URL (read with fsspec) rather than in a local directory."""
        return is_url(self.directory)

    def shard_path(self, shard: int) -> str:
        """The shard file (or URL) of shard ``shard`` under the default chunk key encoding."""
        key = shard_key(shard, len(self.shape), self.separator)
        return f"{self.directory}/{key}" if self.remote else os.path.join(self.directory, key)


def fast_layout(array: zarr.Array) -> ChunkLayout | None:
    """The :class:`ChunkLayout` of ``array``, or None if the fast path cannot read it bit-exactly;
    the reason is logged at debug level.

    Every part of the metadata that changes where or how bytes are stored is checked: the
    fast path is an optimisation, and whatever it does not know it leaves to zarr-python.
    """
    reason = _layout_mismatch(array)
    if reason:
        log.debug("%s: read with zarr-python: %s", array.path, reason)
        return None
    meta = array.metadata.to_dict()
    sharding = meta["codecs"][0]["configuration"]
    return ChunkLayout(
        directory=_array_location(array),
        shape=tuple(int(n) for n in array.shape),
        dtype=np.dtype(array.dtype).str,
        fill_value=array.fill_value,
        shard_samples=int(meta["chunk_grid"]["configuration"]["chunk_shape"][0]),
        separator=meta["chunk_key_encoding"].get("configuration", {}).get("separator", "/"),
        index_at_end=sharding.get("index_location", "end") == "end",
        index_crc=len(sharding["index_codecs"]) == 2,
        blosc=len(sharding["codecs"]) == 2,
    )


def _layout_mismatch(array: zarr.Array) -> str | None:
    """Why the fast path cannot read ``array``, or None if it can."""
    if array.metadata.zarr_format != 3:
        return "not a Zarr v3 array"
    if not isinstance(array.store, (zarr.storage.LocalStore, zarr.storage.FsspecStore)):
        return f"store {array.store} is neither a local directory nor an fsspec URL"
    meta = array.metadata.to_dict()
    dtype = np.dtype(array.dtype)
    shape = tuple(int(n) for n in array.shape)
    if dtype.kind not in "biuf" or dtype.newbyteorder("<") != dtype:
        return f"dtype {dtype} is not a little-endian number on this machine"
    if len(shape) < 1:
        return "0-d array"
    if meta.get("storage_transformers"):
        return "storage transformers"
    key_encoding = meta["chunk_key_encoding"]
    if key_encoding["name"] != "default" or key_encoding.get("configuration", {}).get("separator", "/") not in "/.":
        return f"chunk key encoding {key_encoding}"
    grid = meta["chunk_grid"]
    if grid["name"] != "regular" or tuple(grid["configuration"]["chunk_shape"][1:]) != shape[1:]:
        return f"chunk grid {grid} does not hold whole samples"
    codecs = meta["codecs"]
    if len(codecs) != 1 or codecs[0]["name"] != "sharding_indexed":
        return f"codecs {[c['name'] for c in codecs]} are not one sharding codec"
    sharding = codecs[0]["configuration"]
    if tuple(sharding["chunk_shape"]) != (1, *shape[1:]):
        return f"inner chunks {sharding['chunk_shape']} are not one sample each"
    if sharding.get("index_location", "end") not in ("start", "end"):
        return f"index location {sharding['index_location']}"
    index_codecs = [_codec_key(c, 8) for c in sharding["index_codecs"]]
    if index_codecs not in (["bytes-little"], ["bytes-little", "crc32c"]):
        return f"index codecs {index_codecs}"
    inner = [_codec_key(c, dtype.itemsize) for c in sharding["codecs"]]
    if inner not in (["bytes-little"], ["bytes-little", "blosc"]):
        return f"inner codecs {inner}"
    return None


def _array_location(array: zarr.Array) -> str:
    """The directory of ``array`` in its local store, or its URL in an fsspec store."""
    if isinstance(array.store, zarr.storage.FsspecStore):
        return array.store.fs.unstrip_protocol(f"{array.store.path.rstrip('/')}/{array.path}")
    return os.path.join(array.store.root, *array.path.split("/"))


def _codec_key(codec: Mapping, itemsize: int) -> str:
    """A codec's name, with the byte order of ``bytes`` (implicit for one-byte elements)."""
    name = codec["name"]
    if name != "bytes":
        return name
    endian = (codec.get("configuration") or {}).get("endian")
    return "bytes-little" if endian == "little" or (endian is None and itemsize == 1) else f"bytes-{endian}"
