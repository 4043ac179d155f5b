"""Random access to the Zarr output: :class:`ZarrDataset` for training, :func:`open_zarr` for analysis.

Why a reader of our own: a plain zarr-python ``array[i]`` spends about a millisecond per call in
its async machinery, metadata handling and a fresh read of the shard index — several times what
it costs to decode one sample's chunk. Our layout is simple (one chunk per sample, in shards with
a crc32c-checked index), so the fast path reads each shard's index once per process, then does
one ``pread`` and one Blosc decode per chunk, straight into the array handed to torch.

The fast path only takes arrays whose ``zarr.json`` it fully recognises (see
:func:`fast_layout`); every other array — other codecs, no sharding, another key encoding —
is read with zarr-python, so correctness never depends on it. Tests compare the two bit for bit.

Batches: the DataLoader asks a map-style dataset for a whole batch through ``__getitems__``.
:meth:`ZarrDataset.__getitems__` decodes the batch straight into one buffer per field, and the
default ``collate_fn`` hands those buffers on as the batch instead of stacking copies of them.
The buffers are reused slots (:mod:`pipeline.read.batches`, as for the streaming reader):
shared memory inside a DataLoader worker, where with the stock collation every batch went into
fresh shared memory, whose page faults cost the worker several times the decoding; private
memory in the main process.
The samples of a batch decode at once on a few threads (:mod:`pipeline.read.decode_threads`); the
per-process state below is safe to share between them.

Process safety: file handles, shard indexes, zarr-python arrays and shared-memory slots live in
a per-process state that is rebuilt when ``os.getpid()`` changes and is never pickled, so a
dataset built in the main process works unchanged in forked or spawned DataLoader workers.
"""

from __future__ import annotations

import collections
import logging
import operator
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import zarr
from torch.utils.data import get_worker_info

from pipeline.errors import OutputError
from pipeline.read.batches import _Layout, _SlotPool
from pipeline.read.decode_threads import DecodeThreads
from pipeline.schema import BONE_NAMES, DISC_NAMES, FIELD_SHAPES, LABEL_NAMES
from pipeline.store.codecs import decode_into
from pipeline.store.manifest import read_manifest
from pipeline.store.zarr_store import EMPTY_CHUNK, read_shard_index, store_path

if TYPE_CHECKING:
    import xarray

log = logging.getLogger(__name__)

__all__ = ["ChunkLayout", "ZarrDataset", "dask_step", "fast_layout", "open_zarr"]

#: Open shard files kept per process: bounded, so thousands of shards stay under the fd limit.
_MAX_OPEN_FILES = 64


@dataclass(frozen=True)
class ChunkLayout:
    """Where the bytes of sample ``i`` of one array are, for arrays the fast path can read.

    One inner chunk per sample, ``shard_samples`` inner chunks per shard file, each chunk the
    sample's little-endian bytes, optionally as one Blosc frame (which records its own
    typesize and shuffle, so any Blosc configuration decodes the same way).
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

    def shard_path(self, shard: int) -> str:
        """The shard file of shard ``shard`` under the default chunk key encoding."""
        coords = [str(shard)] + ["0"] * (len(self.shape) - 1)
        return os.path.join(self.directory, "c" + self.separator + self.separator.join(coords))


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
        directory=os.path.join(array.store.root, *array.path.split("/")),
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
    if not isinstance(array.store, zarr.storage.LocalStore):
        return f"store {array.store} is not a local directory"
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


def _codec_key(codec: Mapping, itemsize: int) -> str:
    """A codec's name, with the byte order of ``bytes`` (implicit for one-byte elements)."""
    name = codec["name"]
    if name != "bytes":
        return name
    endian = (codec.get("configuration") or {}).get("endian")
    return "bytes-little" if endian == "little" or (endian is None and itemsize == 1) else f"bytes-{endian}"


class _ProcessState:
    """Open shard files, decoded shard indexes, zarr-python arrays and the batch slots of one
    process (shared memory in a DataLoader worker, private memory in the main process).

    Files are plain unbuffered file objects in a small LRU: evicting one only drops the
    cache's reference, so a thread still reading from it keeps it open until it is done.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.files: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self.indexes: dict[str, np.ndarray] = {}
        self.arrays: dict[str, zarr.Array] = {}
        self.slots: _SlotPool | None = None

    def slot_pool(self, specs: Mapping[str, tuple[tuple[int, ...], np.dtype]], rows: int, shared: bool) -> _SlotPool:
        """Slots for batches of up to ``rows`` samples (a larger batch replaces smaller slots):
        shared memory in a DataLoader worker, private memory in the main process."""
        if self.slots is None or self.slots.layout.batch_size < rows:
            self.slots = _SlotPool(_Layout.of(specs, rows), shared=shared)
        return self.slots

    def file(self, path: str):
        with self.lock:
            file = self.files.get(path)
            if file is not None:
                self.files.move_to_end(path)
                return file
        file = open(path, "rb", buffering=0)  # FileNotFoundError: a shard never written
        with self.lock:
            self.files[path] = file
            while len(self.files) > _MAX_OPEN_FILES:
                self.files.popitem(last=False)
        return file

    def index(self, layout: ChunkLayout, path: str, file) -> np.ndarray:
        """The (offset, nbytes) pairs of a shard's inner chunks, read and checked once."""
        index = self.indexes.get(path)
        if index is None:
            index = read_shard_index(file.fileno(), path, layout.shard_samples, layout.index_at_end, layout.index_crc)
            self.indexes[path] = index
        return index


def _read_fast(layout: ChunkLayout, state: _ProcessState, row: int, out: np.ndarray | None = None) -> np.ndarray:
    """Sample ``row`` of a fast-path array: one ``pread`` and one decode into ``out`` (a
    C-contiguous array of the sample's shape and dtype), or into a new array."""
    if out is None:
        out = np.empty(layout.sample_shape, dtype=layout.dtype)
    shard, within = divmod(row, layout.shard_samples)
    path = layout.shard_path(shard)
    try:
        file = state.file(path)
    except FileNotFoundError:  # zarr-python writes no shard whose chunks all equal the fill value
        np.copyto(out, layout.fill_value, casting="unsafe")  # what np.full does
        return out
    offset, nbytes = (int(v) for v in state.index(layout, path, file)[within])
    if offset == EMPTY_CHUNK and nbytes == EMPTY_CHUNK:
        np.copyto(out, layout.fill_value, casting="unsafe")
        return out
    expected = layout.sample_nbytes
    if not layout.blosc:
        got = os.preadv(file.fileno(), [memoryview(out).cast("B")], offset) if nbytes == expected else -1
        if got != expected:
            raise OutputError(f"{path}: chunk {within} has {nbytes} bytes, expected {expected}")
        return out
    return decode_into(os.pread(file.fileno(), nbytes, offset), out, f"{path}: chunk {within}")


class ZarrDataset(torch.utils.data.Dataset):
    """A map-style dataset over one split of a converted output: ``ds[i]`` →
    ``{"__key__": key, field: tensor, ...}`` with only the requested fields read.

    Sample order is the split's order in the manifest (sorted by patient, then shape). Lookups
    by patient and virtual shape (``aug``) are answered from the ``patient``/``aug`` arrays
    without touching any image data. Pickles small (no open files, no caches), so it can be
    handed to DataLoader workers of any start method and used with ``DistributedSampler``.

    With ``DataLoader(ds, batch_size=b, ...)`` and the default ``collate_fn``, batches are read
    whole by :meth:`__getitems__` into reused memory (shared memory from DataLoader workers):
    a batch stays valid for as long as the receiving process holds any tensor (or view) of it;
    only then is its memory reused — don't pass such tensors on to yet another process.
    """

    def __init__(
        self,
        out: str | os.PathLike,
        split: str = "train",
        fields: Sequence[str] | None = None,
        *,
        fast: bool = True,
        decode_threads: int | None = None,
    ) -> None:
        """Open ``split`` of the output in ``out``; ``fields`` default to all of the split's fields.

        ``fast=False`` reads everything with zarr-python (the reference the fast path is
        tested against). ``decode_threads``: threads that decode the samples of a batch read by
        :meth:`__getitems__` at once (default: the process's cores, divided among local ranks
        and DataLoader workers; see :mod:`pipeline.read.decode_threads`).
        """
        self.out = Path(out)
        self.split = split
        samples, group, self.fields = _open_split(self.out, read_manifest(self.out), split, fields)
        self.keys: tuple[str, ...] = tuple(samples.keys)
        self._rows = samples.rows
        arrays = {f: group[f] for f in self.fields}
        for name, length in [("aug", group["aug"].shape[0]), *((f, a.shape[0]) for f, a in arrays.items())]:
            if length != samples.planned or len(self._rows) != len(self.keys) or self._rows.max(initial=0) >= length:
                raise OutputError(
                    f"{store_path(self.out) / split / name}: {length} rows do not hold "
                    f"the {len(self.keys)} samples the manifest lists"
                )
        self.patients = _read_only(group["patient"][:][self._rows])
        self.augs = _read_only(group["aug"][:][self._rows])
        self._layouts: dict[str, ChunkLayout | None] = {f: fast_layout(a) if fast else None for f, a in arrays.items()}
        self._specs = {f: (tuple(int(n) for n in a.shape[1:]), np.dtype(a.dtype)) for f, a in arrays.items()}
        self._by_key = {k: i for i, k in enumerate(self.keys)}
        self._by_patient_aug = {(int(p), int(a)): i for i, (p, a) in enumerate(zip(self.patients, self.augs))}
        self._local: _ProcessState | None = None
        self._decoder = DecodeThreads(decode_threads)

    # ------------------------------------------------------------------ lookups

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def fast_fields(self) -> tuple[str, ...]:
        """Fields read by the fast path; the others go through zarr-python."""
        return tuple(f for f, layout in self._layouts.items() if layout is not None)

    def index_of(self, patient: int | None = None, aug: int | None = None, *, key: str | None = None) -> int:
        """Row of the sample of ``patient`` and virtual shape ``aug`` (or of ``key``); KeyError if absent."""
        if key is not None:
            if key not in self._by_key:
                raise KeyError(f"split {self.split!r} has no sample {key!r}")
            return self._by_key[key]
        if patient is None or aug is None:
            raise TypeError("index_of needs patient and aug, or key")
        try:
            return self._by_patient_aug[(int(patient), int(aug))]
        except KeyError:
            raise KeyError(f"split {self.split!r} has no sample of patient {patient}, aug {aug}") from None

    def indices(self, patient: int | Iterable[int] | None = None, aug: int | Iterable[int] | None = None) -> list[int]:
        """Rows matching ``patient`` and ``aug`` (each an int, several, or None for any), in order.

        Meant for ``torch.utils.data.Subset(ds, ds.indices(patient=3))``.
        """
        keep = _matches(self.patients, patient) & _matches(self.augs, aug)
        return np.flatnonzero(keep).tolist()

    def get(self, patient: int, aug: int) -> dict[str, Any]:
        """The sample of ``patient`` and virtual shape ``aug``, as ``ds[i]`` gives it."""
        return self[self.index_of(patient, aug)]

    # ------------------------------------------------------------------ reads

    def __getitem__(self, index: int) -> dict[str, Any]:
        key, record = self.read_record(index)
        return {"__key__": key, **{f: torch.from_numpy(a) for f, a in record.items()}}

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """``[ds[i] for i in indices]``, read into one buffer per field: how DataLoader fetches a batch.

        The samples' tensors are rows of those buffers, and the default ``collate_fn`` returns
        the buffers themselves as the batch ``{"__key__": [key, ...], field: Tensor(b, ...)}``
        rather than stacking copies. The buffers are a reused slot of memory (shared memory in a
        DataLoader worker); see the class docstring for how long such a batch stays valid. Any
        other ``collate_fn`` gets the list of samples it would get without this method; a
        sample it changed (a field replaced, added or removed) makes the default collation
        stack the list as usual.
        """
        positions = [self._index(i) for i in indices]
        keys = [self.keys[p] for p in positions]
        state = self._state()
        in_worker = get_worker_info() is not None
        batch = state.slot_pool(self._specs, len(keys), shared=in_worker).batch(len(keys), keys)
        arrays, tensors = batch.arrays, batch.tensors()
        whole: Any = batch if in_worker else {"__key__": keys, **tensors}

        def read_sample(j: int) -> None:
            row = int(self._rows[positions[j]])
            for field, array in arrays.items():
                self._read(state, field, row, out=array[j])

        self._decoder.run(read_sample, range(len(positions)))
        samples = [_Sample({"__key__": key, **{f: t[j] for f, t in tensors.items()}}) for j, key in enumerate(keys)]
        return _Batch(samples, whole)

    def read_record(self, index: int, fields: Sequence[str] | None = None) -> tuple[str, dict[str, np.ndarray]]:
        """Sample ``index`` as a record ``(key, {field: numpy array})``, reading only ``fields``."""
        index = self._index(index)
        row = int(self._rows[index])
        fields = self.fields if fields is None else fields
        state = self._state()
        return self.keys[index], {f: self._read(state, f, row) for f in fields}

    def _index(self, index: int) -> int:
        position = operator.index(index)
        n = len(self.keys)
        if position < 0:
            position += n
        if not 0 <= position < n:
            raise IndexError(f"sample index {index} out of range for split {self.split!r} of {n} samples")
        return position

    def _read(self, state: _ProcessState, field: str, row: int, out: np.ndarray | None = None) -> np.ndarray:
        try:
            layout = self._layouts[field]
        except KeyError:
            raise OutputError(f"field {field!r} was not opened; this dataset has {list(self.fields)}") from None
        if layout is not None:
            return _read_fast(layout, state, row, out)
        array = state.arrays.get(field)
        if array is None:
            array = state.arrays[field] = zarr.open_array(store_path(self.out), path=f"{self.split}/{field}", mode="r")
        values = np.asarray(array[row], order="C")
        if out is None:
            return values
        np.copyto(out, values)
        return out

    def _state(self) -> _ProcessState:
        state = self._local
        if state is None or state.pid != os.getpid():  # first use, or first use after a fork
            state = self._local = _ProcessState()
        return state

    def close(self) -> None:
        """Close this process's shard files now rather than when the dataset is collected."""
        self._local = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_local": None}

    def __repr__(self) -> str:
        return f"ZarrDataset({str(self.out)!r}, split={self.split!r}, fields={list(self.fields)}, samples={len(self)})"


# ---------------------------------------------------------------------- batches


class _Sample(dict):
    """One sample of :meth:`ZarrDataset.__getitems__`, like ``ds[i]`` (and pickled as a plain dict);
    its own type only tells the default collation to look for the batch's buffers."""

    def __reduce__(self):
        return dict, (dict(self),)


class _Batch(list):
    """The samples of one :meth:`ZarrDataset.__getitems__` call, and the buffers they are rows of:
    ``whole`` (a dict of tensors, or a :class:`~pipeline.read.batches._SharedBatch` in a worker).
    Pickled, it is the plain list of dicts a custom ``collate_fn`` may return as is."""

    def __init__(self, samples: list[_Sample], whole: Any) -> None:
        super().__init__(samples)
        self.whole = whole
        self._items = [(sample, tuple(sample.items())) for sample in samples]

    def __reduce__(self):  # a plain list of plain dicts, as the DataLoader would have made
        return list, (list(self),)

    def intact(self) -> bool:
        """Whether the list still holds the same samples, in order, each with the values it was given."""
        return len(self) == len(self._items) and all(
            sample is original and len(sample) == len(items) and all(sample.get(k) is v for k, v in items)
            for sample, (original, items) in zip(self, self._items)
        )


def _collate_samples(batch: Sequence[Mapping], *, collate_fn_map: dict | None = None) -> Any:
    """The default collation of :class:`_Sample` dicts: the batch's buffers when the samples are as
    :meth:`ZarrDataset.__getitems__` made them, else what it does for any other dicts."""
    if isinstance(batch, _Batch) and batch.intact():
        return batch.whole
    return {key: _collate([d[key] for d in batch], collate_fn_map=collate_fn_map) for key in batch[0]}


try:  # torch's documented way to extend default_collate (its module is private: degrade to stacking)
    from torch.utils.data._utils.collate import collate as _collate
    from torch.utils.data._utils.collate import default_collate_fn_map as _default_collate_fn_map
except ImportError:  # pragma: no cover
    log.debug("torch.utils.data._utils.collate moved: DataLoader batches of ZarrDataset are stacked copies")
else:
    _default_collate_fn_map[_Sample] = _collate_samples


# ---------------------------------------------------------------------- opening


class _Split:
    """The samples of a split the manifest lists, and the Zarr row of each.

    Rows are ``0..N-1`` unless members were rejected under ``--skip-bad``: their rows stay
    in the arrays, holding the fill value, and no key points at them.
    """

    def __init__(self, info: Mapping, group: zarr.Group) -> None:
        self.keys = list(info["keys"])
        self.rows = np.asarray(info.get("rows", range(len(self.keys))), dtype=np.int64)
        self.planned = int(group["patient"].shape[0])


def _open_split(
    out: Path, manifest: Mapping, split: str, fields: str | Sequence[str] | None
) -> tuple[_Split, zarr.Group, tuple[str, ...]]:
    """The samples (from the manifest), Zarr group and fields (all by default) of a split, all checked."""
    if split not in manifest["splits"]:
        raise OutputError(f"{out}: no split {split!r} (has {sorted(manifest['splits'])})")
    path = store_path(out) / split
    try:
        group = zarr.open_group(store_path(out), path=split, mode="r", zarr_format=3)
    except (FileNotFoundError, zarr.errors.BaseZarrError) as exc:
        raise OutputError(f"{path}: not a Zarr group ({exc}); is the conversion complete?") from exc
    available = _available_fields(group)
    chosen = available if fields is None else ((fields,) if isinstance(fields, str) else tuple(fields))
    missing = [f for f in chosen if f not in available]
    if missing:
        raise OutputError(f"{path}: no field(s) {missing} (has {list(available)})")
    return _Split(manifest["splits"][split], group), group, chosen


def _available_fields(group: zarr.Group) -> tuple[str, ...]:
    """The split's fields in schema order (the group attribute), else its arrays but patient/aug."""
    names = [f for f in group.attrs.get("fields", []) if f in group]
    return tuple(names or sorted(n for n in group.array_keys() if n not in ("patient", "aug")))


def _matches(values: np.ndarray, wanted: int | Iterable[int] | None) -> np.ndarray:
    if wanted is None:
        return np.ones(len(values), dtype=bool)
    return np.isin(values, [wanted] if isinstance(wanted, (int, np.integer)) else list(wanted))


def _read_only(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    values.flags.writeable = False
    return values


# ---------------------------------------------------------------------- analysis

#: Dimension names of the documented fields (after the sample axis), shared between fields
#: where they mean the same thing, so xarray can align e.g. ``bone`` with ``bone_mask``.
_DIMS: dict[str, tuple[str, ...]] = {
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
_DIM_LABELS: dict[str, list[str]] = {
    "structure": [LABEL_NAMES[i] for i in range(1, 12)],
    "vertebra": list(BONE_NAMES),
    "disc": list(DISC_NAMES),
}


def _dims(field: str, sample_shape: tuple[int, ...]) -> tuple[str, ...]:
    """Named dimensions for documented shapes; ``<field>_dim<k>`` for anything else."""
    if field in _DIMS and sample_shape == FIELD_SHAPES.get(field):
        return ("sample", *_DIMS[field])
    return ("sample", *(f"{field}_dim{k}" for k in range(len(sample_shape))))


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
    out: str | os.PathLike, split: str | None = None, fields: Sequence[str] | None = None
) -> xarray.Dataset | dict[str, xarray.Dataset]:
    """Lazy views of the output for analysis: an ``xarray.Dataset`` of ``split``, or a dict of
    them by split when ``split`` is None.

    Each field is a dask array chunked along Zarr shards (see :func:`dask_step`), with the
    coordinates ``key``, ``patient`` and ``aug`` along ``sample``, so per-patient statistics
    such as ``open_zarr(out, "train").img.groupby("patient").mean()`` read each chunk once
    and never hold more than a few shards in memory.
    """
    import dask
    import dask.array as da
    import xarray as xr

    limit = dask.utils.parse_bytes(dask.config.get("array.chunk-size"))
    out = Path(out)
    manifest = read_manifest(out)
    views = {}
    for name in [split] if split is not None else sorted(manifest["splits"]):
        samples, group, chosen = _open_split(out, manifest, name, fields)
        data_vars = {}
        for field in chosen:
            array = group[field]
            sample_nbytes = int(np.prod(array.shape[1:], dtype=np.int64)) * np.dtype(array.dtype).itemsize
            step = dask_step((array.shards or array.chunks)[0], sample_nbytes, limit)
            data = da.from_zarr(array, chunks=(step, *array.shape[1:]))
            if len(samples.rows) != samples.planned:  # rows of rejected members hold no sample
                data = data[samples.rows]
            data_vars[field] = (_dims(field, tuple(array.shape[1:])), data)
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
