"""The memory of a shared-memory batch slot: its header words, and the object that owns its pages.

A slot starts with a header of int64 words (its state, and whether the receiving process keeps it
mapped), padded to :data:`ALIGN` bytes; the batch's fields follow.
"""

from __future__ import annotations

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
