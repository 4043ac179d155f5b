"""Random access to the Zarr output: :class:`ZarrDataset` for training, :func:`open_zarr` for analysis.

Why a reader of our own: a plain zarr-python ``array[i]`` spends about a millisecond per call in
its async machinery, metadata handling and a fresh read of the shard index — several times what
it costs to decode one sample's chunk. Our layout is simple (one chunk per sample, in shards with
a crc32c-checked index), so the fast path reads each shard's index once per process, then does
one ``pread`` (one ranged read at a URL) and one Blosc decode per chunk, straight into the array
handed to torch.

The fast path only takes arrays whose ``zarr.json`` it fully recognises (see
:func:`fast_layout`); every other array — other codecs, no sharding, another key encoding —
is read with zarr-python, so correctness never depends on it. Tests compare the two bit for bit.

Batches: the DataLoader asks a map-style dataset for a whole batch through ``__getitems__``.
:meth:`ZarrDataset.__getitems__` decodes the batch straight into one buffer per field, and the
default ``collate_fn`` hands those buffers on as the batch instead of stacking copies of them.
The buffers are reused slots (:mod:`pipeline.read.batch_memory.pool`, as for the streaming reader):
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

import logging
import operator
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import zarr
from torch.utils.data import get_worker_info

from pipeline.deprecation import renamed_argument
from pipeline.errors import NotFoundError, OutputError, SampleIndexError, UsageError
from pipeline.read.batch_memory.memory import ArraySpec
from pipeline.read.batch_memory.pool import SharedBatch
from pipeline.read.collate import Batch, Sample
from pipeline.read.decode_threads import DecodeThreads
from pipeline.read.device import torch_dtypes
from pipeline.read.items import batch_item, sample_item
from pipeline.read.samplers import PaddingIndex
from pipeline.read.transforms import Transform, apply_transform, as_transform, stack_into_slot, tensors_of
from pipeline.read.zarr_fast import ProcessState, read_fast
from pipeline.read.zarr_lookups import Predicate, SampleLookups, kept_samples
from pipeline.store.location import read_stream_manifest
from pipeline.store.zarr_fast_layout import ChunkLayout, fast_layout
from pipeline.store.zarr_layout import open_split, open_store, zarr_location
from pipeline.store.zarr_store import SOURCE_DTYPE_ATTRIBUTE
from pipeline.urls import is_url

log = logging.getLogger(__name__)


class ZarrDataset(SampleLookups, torch.utils.data.Dataset):
    """A map-style dataset over one split of a converted output: ``ds[i]`` →
    ``{"__key__": key, "__pad__": False, field: tensor, ...}`` with only the requested fields read.

    Sample order is the split's order in the manifest (sorted by patient, then shape). Lookups
    by patient and virtual shape (``aug``) are answered from the ``patient``/``aug`` arrays
    without touching any image data. Pickles small (no open files, no caches), so it can be
    handed to DataLoader workers of any start method and used with ``DistributedSampler``.
    ``__pad__`` is True only for a :class:`~pipeline.read.samplers.PaddingIndex`, the repeats with
    which :class:`pipeline.DistributedSampler <pipeline.read.samplers.DistributedSampler>` (torch's,
    marked) pads a rank's share: leave them out of an evaluation's sums.

    With ``DataLoader(ds, batch_size=b, ...)`` and the default ``collate_fn``, batches are read
    whole by :meth:`__getitems__` into reused memory (shared memory from DataLoader workers):
    a batch stays valid for as long as the receiving process holds any tensor (or view) of it;
    only then is its memory reused — don't pass such tensors on to yet another process.
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "train",
        fields: Sequence[str] | None = None,
        *,
        fast: bool = True,
        decode_threads: int | None = None,
        transform: Transform | None = None,
        seed: int = 0,
        storage_options: Mapping[str, Any] | None = None,
        compact: bool = False,
        out: str | os.PathLike | None = None,
        patients: int | Iterable[int] | None = None,
        keys: str | Iterable[str] | None = None,
        where: Predicate | None = None,
    ) -> None:
        """Open ``split`` of the output at ``root``; ``fields`` default to all of the split's fields.

        ``root`` (formerly ``out``) is the output directory or its URL, as for ``StreamingDataset``: ``file://``,
        ``s3://``, ``http(s)://`` or any other fsspec URL, with ``storage_options`` (credentials,
        endpoint, ...) passed to fsspec and zarr-python; without them fsspec finds credentials
        where it usually does (the environment, configuration files).
        ``fast=False`` reads everything with zarr-python (the reference the fast path is
        tested against). ``decode_threads``: threads that decode the samples of a batch read by
        :meth:`__getitems__` at once (default: the process's cores, divided among local ranks
        and DataLoader workers; see :mod:`pipeline.read.decode_threads`).
        ``compact``: fields in their stored dtypes, not widened to the source's (as for
        ``StreamingDataset``; ``source_dtypes`` names those, for ``pipeline.to_device``).
        ``transform(sample, rng) -> sample`` or ``transform(sample)`` (MONAI, torchvision v2): augmentation
        of every sample read (``ds[i]`` and batches) on the decode threads, in DataLoader workers; ``rng``
        from ``(seed, epoch, key)``, the epoch :meth:`set_epoch`'s. Contract: :mod:`pipeline.read.transforms`.
        ``patients``, ``keys``, ``where``: a subset, as for ``StreamingDataset``; indices and ``keys`` are its.
        """
        if seed < 0:
            raise UsageError(f"seed must be non-negative, got {seed}")
        root = os.fspath(renamed_argument(root, out, "out", "root", "ZarrDataset"))
        self.root: Path | str = root if is_url(root) else Path(root)
        self.split = split
        self.storage_options = dict(storage_options or {})
        manifest = read_stream_manifest(os.fspath(self.root), self.storage_options)
        samples, group, self.fields = open_split(self.root, manifest, split, fields, self.storage_options)
        self.keys, self._rows = kept_samples(samples, manifest, split, self.root, patients, keys, where)
        arrays = {f: group[f] for f in self.fields}
        for name, length in [("aug", group["aug"].shape[0]), *((f, a.shape[0]) for f, a in arrays.items())]:
            if length != samples.planned or len(self._rows) != len(self.keys) or self._rows.max(initial=0) >= length:
                raise OutputError(
                    f"{zarr_location(self.root, split, name)}: {length} rows do not hold "
                    f"the {len(self.keys)} samples the manifest lists"
                )
        self.find_samples(self.keys, group["patient"][:][self._rows], group["aug"][:][self._rows])
        self._layouts: dict[str, ChunkLayout | None] = {f: fast_layout(a) if fast else None for f, a in arrays.items()}
        # each array's own metadata: its dtype, and the source dtype a narrowed field names
        source = {f: np.dtype(a.attrs.get(SOURCE_DTYPE_ATTRIBUTE, a.dtype)) for f, a in arrays.items()}
        self.compact, self.source_dtypes = compact, torch_dtypes(source)
        self._specs = {
            f: ArraySpec(a.shape[1:], np.dtype(a.dtype) if compact else source[f]) for f, a in arrays.items()
        }
        self._local: ProcessState | None = None
        self._decoder = DecodeThreads(decode_threads)
        self.transform, self.seed = as_transform(transform), int(seed)
        # the epoch of set_epoch, in shared memory: persistent DataLoader workers keep their own
        # copy of the dataset across epochs, and read it from here
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    # ------------------------------------------------------------------ lookups

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose generators the transform gets (call it before iterating, as for
        ``DistributedSampler.set_epoch``; DataLoader workers, persistent or not, follow it)."""
        if epoch < 0:
            raise UsageError(f"epoch must be non-negative, got {epoch}")
        self._epoch[0] = epoch

    @property
    def fast_fields(self) -> tuple[str, ...]:
        """Fields read by the fast path; the others go through zarr-python."""
        return tuple(f for f, layout in self._layouts.items() if layout is not None)

    # ------------------------------------------------------------------ reads

    def __getitem__(self, index: int | Sequence[int]) -> dict[str, Any]:
        """Sample ``index``; or, for a list (tuple, 1-d array) of indices, their whole batch
        ``{"__key__": [key, ...], field: Tensor(b, ...)}``, as ``DataLoader(ds,
        sampler=BatchSampler(...), batch_size=None)`` asks for it (read as :meth:`__getitems__` reads)."""
        indices = _index_list(index)
        if indices is not None:
            return self.__getitems__(indices).whole
        key, record = self.read_record(index)
        if self.transform is not None:
            record = apply_transform(self.transform, record, key, self.seed, self.epoch)
        return sample_item(key, isinstance(index, PaddingIndex), tensors_of(record))

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """``[ds[i] for i in indices]``, read into one buffer per field: how DataLoader fetches a batch.

        The samples' tensors are rows of those buffers, and the default ``collate_fn`` returns
        the buffers themselves as the batch ``{"__key__": [key, ...], field: Tensor(b, ...)}``
        rather than stacking copies. The buffers are a reused slot of memory (shared memory in a
        DataLoader worker); see the class docstring for how long such a batch stays valid. Any
        other ``collate_fn`` gets the list of samples it would get without this method; a
        sample it changed (a field replaced, added or removed) makes the default collation
        stack the list as usual. With a transform, the samples are transformed first (on the
        decode threads) and the buffers shaped like the results.
        """
        state = self._state()
        if any(_index_list(i) is not None for i in indices):
            raise UsageError(
                f"ZarrDataset: the DataLoader asked for a batch of {len(indices)} lists of indices (a "
                "sampler that yields lists, such as a BatchSampler, under a DataLoader that batches "
                "too): use DataLoader(ds, batch_sampler=...), or sampler=... with batch_size=None"
            )
        positions = [self._index(i) for i in indices]
        keys = [self.keys[p] for p in positions]
        pad = [isinstance(i, PaddingIndex) for i in indices]
        in_worker = get_worker_info() is not None
        if self.transform is None:
            batch = state.slot_pool(self._specs, len(keys), shared=in_worker).batch(len(keys), keys, pad)

            def read_sample(j: int) -> None:
                row = int(self._rows[positions[j]])
                for field, array in batch.arrays.items():
                    self._read(state, field, row, out=array[j])

            self._decoder.run(read_sample, range(len(positions)))
        else:
            batch = self._read_transformed(state, positions, keys, pad, in_worker)
        tensors = batch.tensors()
        whole: Any = batch if in_worker else batch_item(keys, pad, tensors)
        samples = [
            Sample(sample_item(key, pad[j], {f: t[j] for f, t in tensors.items()})) for j, key in enumerate(keys)
        ]
        return Batch(samples, whole)

    def _read_transformed(
        self, state: ProcessState, positions: list[int], keys: list[str], pad: list[bool], in_worker: bool
    ) -> SharedBatch:
        """Read and transform each sample on the decode threads, then stack the results into a slot."""
        results: list[dict[str, np.ndarray]] = [{} for _ in positions]
        transform, epoch = self.transform, self.epoch

        def read_sample(j: int) -> None:
            row = int(self._rows[positions[j]])
            record = {f: self._read(state, f, row) for f in self.fields}
            results[j] = apply_transform(transform, record, keys[j], self.seed, epoch)  # type: ignore[arg-type]

        self._decoder.run(read_sample, range(len(positions)))
        state.slots, batch = stack_into_slot(state.slots, results, keys, pad, shared=in_worker)
        return batch

    def read_record(self, index: int, fields: Sequence[str] | None = None) -> tuple[str, dict[str, np.ndarray]]:
        """Sample ``index`` as a record ``(key, {field: numpy array})``, reading only ``fields``."""
        state = self._state()  # first: a worker whose first request fails is watched too
        index = self._index(index)
        row = int(self._rows[index])
        fields = self.fields if fields is None else fields
        return self.keys[index], {f: self._read(state, f, row) for f in fields}

    def _index(self, index: int) -> int:
        position = operator.index(index)
        n = len(self.keys)
        if position < 0:
            position += n
        if not 0 <= position < n:
            raise SampleIndexError(f"sample index {index} out of range for split {self.split!r} of {n} samples")
        return position

    def _read(self, state: ProcessState, field: str, row: int, out: np.ndarray | None = None) -> np.ndarray:
        try:
            layout = self._layouts[field]
        except KeyError:
            raise NotFoundError(f"field {field!r} was not opened; this dataset has {list(self.fields)}") from None
        if layout is not None:  # straight into ``out`` where it has the stored dtype, else widened below
            values = read_fast(layout, state, row, out if out is None or out.dtype == layout.dtype else None)
        else:
            array = state.arrays.get(field)
            if array is None:
                store = open_store(self.root, self.storage_options)
                array = state.arrays[field] = zarr.open_array(store, path=f"{self.split}/{field}", mode="r")
            values = np.asarray(array[row], order="C")
        if out is None:
            dtype = self._specs[field][1]
            return values if values.dtype == dtype else values.astype(dtype)
        if values is not out:
            np.copyto(out, values)
        return out

    def _state(self) -> ProcessState:
        state = self._local
        if state is None or state.pid != os.getpid():  # first use, or first use after a fork
            state = self._local = ProcessState(self.storage_options)
        return state

    def close(self) -> None:
        """Close this process's shard files now rather than when the dataset is collected."""
        self._local = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_local": None}

    def __repr__(self) -> str:
        return f"ZarrDataset({str(self.root)!r}, split={self.split!r}, fields={list(self.fields)}, samples={len(self)})"


def _index_list(index: Any) -> list[int] | None:
    """The indices of a batch asked for as one list (tuple, range, 1-d array or tensor), else None."""
    if isinstance(index, (list, tuple, range)):
        return list(index)
    if isinstance(index, (np.ndarray, torch.Tensor)) and index.ndim == 1:
        return index.tolist()
    return None
