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


def resolve_world(
    explicit: tuple[int, int] | None, handed_over: tuple[int, int] | None, in_worker: bool
) -> tuple[int, int]:
    """``(rank, world size)`` of a dataset in this process: the caller's, else torch.distributed's,
    else, in a DataLoader worker, what the main process handed over (a spawned worker sees no
    initialised torch.distributed), else the environment's. Reads state, changes none."""
    if explicit is not None:
        return explicit
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if in_worker and not distributed and handed_over is not None:
        return handed_over
    return world_from_environment()
