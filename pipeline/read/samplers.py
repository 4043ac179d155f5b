"""Padding that says so: a ``DistributedSampler`` whose repeated indices :class:`ZarrDataset` reports as ``__pad__``.

torch's ``DistributedSampler`` gives every rank ``ceil(N / W)`` indices by repeating the first ones
(unless ``drop_last``), so that ranks step together. For training that is harmless; for an
evaluation summed over ranks it counts those samples twice. :class:`DistributedSampler` here is
torch's, index for index, except that the repeats are :class:`PaddingIndex` values: plain ints to
every consumer, which :class:`~pipeline.read.zarr_dataset.ZarrDataset` recognises and marks
``"__pad__": True``, as :class:`~pipeline.read.stream.StreamingDataset` marks its own padding.
"""

from __future__ import annotations

from typing import Iterator

import torch.utils.data


class PaddingIndex(int):
    """An index that only pads a rank's share (a repeat): an ``int`` like any other, which a
    :class:`~pipeline.read.zarr_dataset.ZarrDataset` reads as usual and marks ``__pad__``. Any
    sampler may yield these; pickled (to DataLoader workers) it stays one."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"PaddingIndex({int(self)})"


class DistributedSampler(torch.utils.data.DistributedSampler):
    """``torch.utils.data.DistributedSampler`` (same arguments, same indices in the same order,
    ``set_epoch`` as usual) whose padding is made of :class:`PaddingIndex` values.

    Rank ``r`` of ``W`` takes the positions ``r, r + W, r + 2W, ...`` of the padded order; those
    at or past ``len(dataset)`` wrap around to its start, and are the padding.
    """

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        if self.drop_last:  # nothing is repeated: the tail is dropped instead
            return iter(indices)
        n = len(self.dataset)  # type: ignore[arg-type]
        return iter(PaddingIndex(i) if self.rank + j * self.num_replicas >= n else i for j, i in enumerate(indices))
