"""The Zarr v3 arrays of an output (``DIR/ssmspine.zarr/<split>/<field>``): creating them, writing
their shard files, reading and checking shard indexes.

What each array holds (shape, stored dtype, one chunk per sample, shards) is
:mod:`pipeline.store.zarr_layout`'s; here each field's array is compressed with the field's measured
Blosc configuration, and a field stored narrower than its source names the source dtype in an attribute.

Arrays are created once, by the coordinator, with zarr-python, before any task runs. A task then
writes whole shard files of its own rows only (zarr-python loses data when processes write parts
of one shard concurrently), and writes them itself with :class:`ShardFileWriter`: the Blosc frame
of each chunk is byte for byte the frame of the matching tar member, so a sample is compressed
once for both formats. The shard format is the one zarr-python writes for these arrays (checked
by :func:`check_layout` and by tests that read the shards with zarr-python and tensorstore):
the chunks' frames back to back, then an index of little-endian uint64 (offset, nbytes) pairs,
one per chunk, then the index's CRC-32C.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Mapping

import google_crc32c
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle

from pipeline.atomic import AtomicFile
from pipeline.errors import OutputError
from pipeline.schema import Schema
from pipeline.storage import Storage, as_storage
from pipeline.store.codecs import SHUFFLE_NAMES, Encoding
from pipeline.store.zarr_layout import (
    SAMPLE_COORDINATES,
    SAMPLE_DIM,
    STORE_NAME,
    check_layout,
    dimension_names,
    open_store,
)


def blosc_codec(encoding: Encoding, itemsize: int) -> BloscCodec:
    """The Zarr codec equivalent to ``encoding`` (same Blosc frame bytes as the tar members)."""
    return BloscCodec(
        typesize=itemsize,
        cname=encoding.cname,
        clevel=encoding.clevel,
        shuffle=BloscShuffle(SHUFFLE_NAMES[encoding.shuffle]),
        blocksize=encoding.blocksize,
    )


#: The attribute of a narrowed field's array that names its source dtype (e.g. ``"<i8"``).
SOURCE_DTYPE_ATTRIBUTE = "ssmspine_source_dtype"


def source_dtype_attribute(source_dtype: str | None) -> dict[str, str]:
    return {} if source_dtype is None else {SOURCE_DTYPE_ATTRIBUTE: source_dtype}


def create_split(
    out: str | os.PathLike | Storage,
    split: str,
    schema: Schema,
    encodings: Mapping[str, Encoding],
    patients: np.ndarray,
    augs: np.ndarray,
    shard_samples: int,
    attributes: Mapping,
    source_dtypes: Mapping[str, str] | None = None,
) -> None:
    """Create (or, when resuming, reopen unchanged) the arrays of one split.

    Every array names its dimensions (:func:`dimension_names`; ``sample`` first) and every field
    lists ``patient`` and ``aug`` as its coordinates, so that ``xarray.open_zarr`` opens a split
    as it is. An existing array with the same shape, dtype, chunking and codecs is kept as it
    is, with whatever shards are already written (its names brought up to date, for an output
    of an earlier version); any other difference is an error rather than a silent overwrite of
    earlier output. ``schema`` holds the stored dtypes; a field stored narrower than its source
    names the source dtype in its attribute :data:`SOURCE_DTYPE_ATTRIBUTE`, so that any Zarr
    reader (tensorstore, zarr-python) can cast back.
    """
    storage = as_storage(out)
    store = open_store(storage.root, storage.storage_options, read_only=False)
    group = zarr.open_group(store, mode="a", zarr_format=3)
    split_group = group.require_group(split)
    n = len(patients)
    coordinates = {"coordinates": " ".join(SAMPLE_COORDINATES)}
    for field, spec in schema.items():
        _require_array(
            storage,
            split_group,
            field,
            shape=(n, *spec.shape),
            dtype=spec.numpy_dtype,
            chunks=(1, *spec.shape),
            shards=(shard_samples, *spec.shape),
            compressors=blosc_codec(encodings[field], spec.numpy_dtype.itemsize),
            dimension_names=dimension_names(field, spec.shape),
            attributes={**coordinates, **source_dtype_attribute((source_dtypes or {}).get(field))},
        )
        check_layout(split_group[field])
    for name, values in (("patient", patients), ("aug", augs)):
        array = _require_array(
            storage,
            split_group,
            name,
            shape=(n,),
            dtype=np.dtype("int32"),
            chunks=(n,),
            shards=None,
            compressors=None,
            dimension_names=(SAMPLE_DIM,),
        )
        array[:] = np.asarray(values, dtype=np.int32)
    split_group.attrs.update({"samples": n, "shard_samples": shard_samples, **attributes})


#: Metadata that names things without changing where or how any byte is stored.
_NAMING = ("dimension_names", "attributes")


def _require_array(storage: Storage, group: zarr.Group, name: str, **spec) -> zarr.Array:
    """Array ``name`` of ``group`` (in the Zarr store of the output in ``storage``) as ``spec``
    says: made, or kept when only its names differ, which are then brought up to date."""
    spec["fill_value"] = _fill(spec["dtype"])
    if name not in group:
        return group.create_array(name, **spec)
    array = group[name]
    written: dict = {}  # what zarr-python writes for these arrays: their zarr.json
    expected = zarr.create_array(store=zarr.storage.MemoryStore(written), **spec).metadata.to_dict()
    found = array.metadata.to_dict()
    if {k: v for k, v in found.items() if k not in _NAMING} != {k: v for k, v in expected.items() if k not in _NAMING}:
        raise OutputError(
            f"{array.store_path}: an existing array with another layout is in the way "
            "(an output of a different conversion?); use a new --out or --force"
        )
    if any(found.get(k) != expected.get(k) for k in _NAMING):  # written before arrays named their axes
        storage.write_bytes(f"{STORE_NAME}/{array.path}/zarr.json", written["zarr.json"].to_bytes())
        array = group[name]
    return array


def _fill(dtype: np.dtype):
    return False if dtype == np.bool_ else 0


#: An index entry of a chunk that was never written.
EMPTY_CHUNK = 2**64 - 1


class ShardFileWriter:
    """Streams the encoded chunks of one Zarr shard into its file, atomically.

    Memory stays at one chunk whatever the shard size: frames are appended as samples arrive,
    and the index is written at the end.
    """

    def __init__(self, target: AtomicFile | str | os.PathLike, chunks_per_shard: int) -> None:
        self._target = target if isinstance(target, AtomicFile) else AtomicFile(target)
        self._index = np.full((chunks_per_shard, 2), EMPTY_CHUNK, dtype="<u8")
        self._chunks = 0
        self._offset = 0

    @property
    def tmp_path(self) -> Path:
        return self._target.tmp_path

    def add(self, frame: bytes) -> None:
        self._index[self._chunks] = (self._offset, len(frame))
        self._target.file.write(frame)
        self._offset += len(frame)
        self._chunks += 1

    def skip(self) -> None:
        """Leave the next chunk unwritten: it reads as the fill value."""
        self._chunks += 1

    def close(self) -> None:
        index = self._index.tobytes()
        self._target.file.write(index + google_crc32c.value(index).to_bytes(4, "little"))
        self._target.close()

    def commit(self) -> None:
        self._target.commit()

    def abort(self) -> None:
        self._target.abort()


#: Bytes per inner chunk in a shard index (little-endian uint64 offset and size), and of its CRC-32C.
INDEX_ENTRY_BYTES = 16
INDEX_CRC_BYTES = 4


def read_shard_index(
    fd: int, path: str | os.PathLike, chunks_per_shard: int, at_end: bool = True, crc: bool = True
) -> np.ndarray:
    """The ``(chunks, 2)`` table of offset and size of each inner chunk of the shard file open as ``fd``.

    Checked before it is trusted (see :func:`parse_shard_index`). ``at_end``/``crc``: where
    zarr-python's layout options put the index; ours is at the end, with a CRC.
    """
    size = os.fstat(fd).st_size
    start, n = shard_index_span(size, path, chunks_per_shard, at_end, crc)
    return parse_shard_index(os.pread(fd, n, start), size, path, chunks_per_shard, crc)


def shard_index_span(
    size: int, path: str | os.PathLike, chunks_per_shard: int, at_end: bool = True, crc: bool = True
) -> tuple[int, int]:
    """``(start, length)`` of the index in a shard file of ``size`` bytes (a file too short for
    one is an :class:`OutputError` naming ``path``)."""
    n = chunks_per_shard * INDEX_ENTRY_BYTES + (INDEX_CRC_BYTES if crc else 0)
    if size < n:
        raise OutputError(f"{path}: {size} bytes, too short for a shard index of {n} bytes; the output is damaged")
    return (size - n if at_end else 0), n


def parse_shard_index(
    raw: bytes, size: int, path: str | os.PathLike, chunks_per_shard: int, crc: bool = True
) -> np.ndarray:
    """The index read from a shard file of ``size`` bytes, checked before it is trusted: its CRC-32C
    (where the layout has one) and every written chunk lying inside the file. Damage is an
    :class:`OutputError` naming ``path``."""
    expected = chunks_per_shard * INDEX_ENTRY_BYTES + (INDEX_CRC_BYTES if crc else 0)
    if len(raw) != expected:
        raise OutputError(f"{path}: got {len(raw)} bytes of a shard index of {expected}; the output is damaged")
    if crc:
        raw, stored = raw[:-INDEX_CRC_BYTES], int.from_bytes(raw[-INDEX_CRC_BYTES:], "little")
        if google_crc32c.value(raw) != stored:
            raise OutputError(f"{path}: the shard index fails its crc32c check; the output is damaged")
    index = np.frombuffer(raw, dtype="<u8").reshape(chunks_per_shard, 2)
    offsets, sizes = index[~(index == EMPTY_CHUNK).all(axis=1)].T
    if np.any(offsets > size) or np.any(sizes > size - np.minimum(offsets, size)):
        raise OutputError(f"{path}: the shard index points past the end of the file; the output is damaged")
    return index


class ShardChunks:
    """The encoded chunks of one shard file, by position, one ``pread`` each; the index is checked first.

    A missing file or a damaged index is an :class:`OutputError` naming ``path``.
    """

    def __init__(self, path: str | os.PathLike, chunks_per_shard: int, name: str | None = None) -> None:
        self.path = path
        name = name or os.fspath(path)  # what messages call the file
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise OutputError(f"{name}: missing; the output is damaged") from None
        try:
            self.index = read_shard_index(self._fd, name, chunks_per_shard)
        except BaseException:
            os.close(self._fd)
            raise

    def __enter__(self) -> "ShardChunks":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def chunk(self, position: int) -> bytes | None:
        """The encoded chunk at ``position``, or None where none was written (it reads as the fill value)."""
        offset, nbytes = (int(n) for n in self.index[position])
        return None if offset == EMPTY_CHUNK else os.pread(self._fd, nbytes, offset)

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        """``(position, encoded chunk)`` of each written chunk, in order."""
        for position in range(len(self.index)):
            if (chunk := self.chunk(position)) is not None:
                yield position, chunk


def iter_shard_chunks(path: str | os.PathLike, chunks_per_shard: int) -> Iterator[tuple[int, bytes]]:
    """``(position, encoded chunk)`` of each written chunk of a shard file, in order, one read each."""
    with ShardChunks(path, chunks_per_shard) as chunks:
        yield from chunks
