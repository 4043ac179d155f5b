"""Handing whole batches to the DataLoader's default collation: a batch's buffers, not stacked copies.

The DataLoader asks a map-style dataset for a whole batch through ``__getitems__``;
:meth:`ZarrDataset.__getitems__ <pipeline.read.zarr_dataset.ZarrDataset.__getitems__>` decodes it
straight into one buffer per field and returns its samples as :class:`Sample` dicts in a
:class:`Batch`; the default ``collate_fn`` then hands those buffers on as the batch.

The other way round, a batch the dataset made itself (a :class:`DatasetBatch`, or a
:class:`~pipeline.read.batch_memory.pool.SharedBatch` in a DataLoader worker) must never be batched again:
``DataLoader(StreamingDataset(..., batch_size=8), batch_size=8)`` (what MosaicML Streaming's users
write) would give a batch of batches in process, and an obscure ``TypeError`` from workers. The
default collation refuses it at the first batch, naming the fix (:func:`refuse_batches_of_batches`).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

from pipeline.errors import UsageError
from pipeline.read.batch_memory.pool import SharedBatch
from pipeline.read.items import samples_in

log = logging.getLogger(__name__)


class Sample(dict):
    """One sample of :meth:`ZarrDataset.__getitems__`, like ``ds[i]`` (and pickled as a plain dict);
    its own type only tells the default collation to look for the batch's buffers."""

    def __reduce__(self):
        return dict, (dict(self),)


class Batch(list):
    """The samples of one :meth:`ZarrDataset.__getitems__` call, and the buffers they are rows of:
    ``whole`` (a dict of tensors, or a :class:`~pipeline.read.batch_memory.pool.SharedBatch` in a worker).
    Pickled, it is the plain list of dicts a custom ``collate_fn`` may return as is."""

    def __init__(self, samples: list[Sample], whole: Any) -> None:
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


class DatasetBatch(dict):
    """A whole batch a dataset made itself, in the process that iterates the DataLoader: a plain
    dict for every use, whose type only tells the default collation not to batch it again."""

    def __reduce__(self):
        return dict, (dict(self),)


def refuse_batches_of_batches(batch: Sequence[Any], *, collate_fn_map: dict | None = None) -> Any:
    """The default collation of whole batches: an error naming the fix, never a batch of batches."""
    raise UsageError(
        f"the dataset already yields whole batches ({samples_in(batch[0])} samples each) and the DataLoader "
        f"batched {len(batch)} of them again: use DataLoader(ds, batch_size=None, ...) with the "
        "dataset's batch_size (or leave batch_size to the DataLoader and none to the dataset)"
    )


def collate_samples(batch: Sequence[Mapping], *, collate_fn_map: dict | None = None) -> Any:
    """The default collation of :class:`Sample` dicts: the batch's buffers when the samples are as
    :meth:`ZarrDataset.__getitems__` made them, else what it does for any other dicts."""
    if isinstance(batch, Batch) and batch.intact():
        return batch.whole
    return {key: _collate([d[key] for d in batch], collate_fn_map=collate_fn_map) for key in batch[0]}


try:  # torch's documented way to extend default_collate (its module is private: degrade to stacking)
    from torch.utils.data._utils.collate import collate as _collate
    from torch.utils.data._utils.collate import default_collate_fn_map as _default_collate_fn_map
except ImportError:  # pragma: no cover
    log.debug("torch.utils.data._utils.collate moved: DataLoader batches of ZarrDataset are stacked copies")
else:
    _default_collate_fn_map[Sample] = collate_samples
    _default_collate_fn_map[DatasetBatch] = refuse_batches_of_batches
    _default_collate_fn_map[SharedBatch] = refuse_batches_of_batches
