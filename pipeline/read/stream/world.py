"""This process's rank and world size: from ``torch.distributed`` if initialised, else the environment."""

from __future__ import annotations

import os

import torch

from pipeline.errors import UsageError


def world_from_environment() -> tuple[int, int]:
    """``(rank, world size)``: torch.distributed's, else ``RANK``/``WORLD_SIZE`` (torchrun's), else one process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    if "WORLD_SIZE" in os.environ:
        return int(os.environ.get("RANK", "0")), int(os.environ["WORLD_SIZE"])
    return 0, 1


def explicit_world(rank: int | None, world_size: int | None) -> tuple[int, int] | None:
    """``(rank, world size)`` given by the caller, checked; None when neither is given."""
    if (rank is None) != (world_size is None):
        raise UsageError("give both rank and world_size, or neither")
    if world_size is None or rank is None:
        return None
    if not 0 <= rank < world_size:
        raise UsageError(f"rank {rank} is not in [0, {world_size})")
    return int(rank), int(world_size)
