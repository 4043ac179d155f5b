"""What both readers hand the training loop, built here and nowhere else: a sample, or a batch of them.

A sample is ``{"__key__": str, "__pad__": bool, field: Tensor}``; a batch is
``{"__key__": [str, ...], "__pad__": BoolTensor(b), field: Tensor(b, ...)}``. ``__key__`` names the
sample (``p12_aug037``), so a loop can log, look up or deduplicate what it trained on. ``__pad__``
marks the repeats that even out the ranks' shares of an epoch under DDP (both readers pad the same
way), so that an exact metric sums only the samples whose mark is False. The field tensors may be
views of reused batch memory (:mod:`pipeline.read.batch_memory`): that is why these functions take
them as they are, and never copy.
"""

from __future__ import annotations

import enum
from typing import Any, Iterable, Mapping, Sequence

import torch

KEY = "__key__"
PAD = "__pad__"


class Delivery(enum.Enum):
    """How an item reaches the training loop: the readers' three ways, named (they were two booleans)."""

    #: one sample, in tensors of its own
    SAMPLE = "sample"
    #: a batch in a reused slot of private memory, in the process that iterates the DataLoader
    BATCH = "batch"
    #: a batch in a reused shared-memory slot, filled in a DataLoader worker and sent without a copy
    SHARED_BATCH = "shared batch"

    @classmethod
    def of(cls, batched: bool, in_worker: bool) -> "Delivery":
        if not batched:
            return cls.SAMPLE
        return cls.SHARED_BATCH if in_worker else cls.BATCH

    @property
    def shared(self) -> bool:
        """The batch goes into shared memory (it leaves the process that reads it)."""
        return self is Delivery.SHARED_BATCH


def sample_item(key: str, pad: bool, tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """One sample: its key, whether it only pads a rank's share, and its fields."""
    return {KEY: key, PAD: bool(pad), **tensors}


def batch_item(keys: list[str], pad: Sequence[bool], tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """A batch: the samples' keys, their padding marks as one bool tensor, and the fields stacked."""
    return {KEY: keys, PAD: pad_tensor(pad), **tensors}


def pad_tensor(pad: Sequence[bool]) -> torch.Tensor:
    """A batch's ``__pad__``: which of its samples only pad a rank's share (repeats), as a bool tensor."""
    return torch.tensor(list(pad), dtype=torch.bool)


def item_names(fields: Iterable[str]) -> list[str]:
    """The names an item holds, in order: key, padding mark, then the fields."""
    return [KEY, PAD, *fields]


def samples_in(item: Mapping[str, Any]) -> int:
    """How many samples an item holds: 1 for a sample, the batch size for a batch."""
    keys = item[KEY]
    return 1 if isinstance(keys, str) else len(keys)
