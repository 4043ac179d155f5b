"""The memory of a shared-memory batch slot: its header words, where its fields lie, and the object that owns its pages.

A slot starts with a header of int64 words (its state, and whether the receiving process keeps it
mapped), padded to :data:`ALIGN` bytes; the batch's fields follow, as :class:`BatchLayout` places
them. Both the sending side (:mod:`pipeline.read.batch_memory.pool`) and the receiving one
(:mod:`pipeline.read.batch_memory.registry`) import this module, and neither imports the other's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, NamedTuple

import numpy as np
import torch

ALIGN = 64
FREE, BUSY = 0, 1
#: Header words (int64) of a slot: its state, and whether the receiving process keeps it mapped.
STATE, MAPPED = 0, 1


class SlotMemory:
    """Owns a slot's memory for numpy and torch; its death frees the slot for reuse."""

    def __init__(self, storage: torch.UntypedStorage) -> None:
        self.storage = storage
        self.__array_interface__ = {
            "shape": (storage.nbytes(),),
            "typestr": "|u1",
            "data": (storage.data_ptr(), False),
            "version": 3,
        }


def header_words(storage: torch.UntypedStorage) -> torch.Tensor:
    """The header words of a slot, as a tensor over its memory (``STATE``, ``MAPPED``)."""
    return torch.empty(0, dtype=torch.int64).set_(storage, 0, (ALIGN // 8,))


class ArraySpec(NamedTuple):
    """Shape and dtype of one field of one sample, as the readers hold it (a numpy dtype, ready to allocate).

    The schema's :class:`~pipeline.schema.FieldSpec` names the dtype as recorded (a string); this is
    the hot path's form of it.
    """

    shape: tuple[int, ...]
    dtype: np.dtype


Specs = Mapping[str, ArraySpec]


@dataclass(frozen=True)
class BatchLayout:
    """Where each field of a batch lies in a slot: (field, offset, per-sample shape, numpy dtype)."""

    fields: tuple[tuple[str, int, tuple[int, ...], str], ...]
    batch_size: int
    nbytes: int

    @classmethod
    def of(cls, specs: Specs, batch_size: int) -> "BatchLayout":
        offset, fields = ALIGN, []  # the first ALIGN bytes hold the header (the slot's state)
        for field, (shape, dtype) in specs.items():
            fields.append((field, offset, tuple(shape), np.dtype(dtype).str))
            offset += -(-batch_size * math.prod(shape) * np.dtype(dtype).itemsize // ALIGN) * ALIGN
        return cls(tuple(fields), batch_size, offset)

    def arrays(self, base: np.ndarray, rows: int) -> dict[str, np.ndarray]:
        """Field arrays of ``rows`` samples, as views of the uint8 array ``base`` of a slot."""
        out = {}
        for field, offset, shape, dtype in self.fields:
            dt = np.dtype(dtype)
            size = rows * math.prod(shape) * dt.itemsize
            out[field] = base[offset : offset + size].view(dt).reshape((rows, *shape))
        return out
