"""This process's rank and world size: from ``torch.distributed`` if initialised, else the environment."""

from __future__ import annotations

import os

import torch


def world_from_environment() -> tuple[int, int]:
    """``(rank, world size)``: torch.distributed's, else ``RANK``/``WORLD_SIZE`` (torchrun's), else one process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    if "WORLD_SIZE" in os.environ:
        return int(os.environ.get("RANK", "0")), int(os.environ["WORLD_SIZE"])
    return 0, 1
