"""Sizes on disk and their human form, shared by the conversion summary, ``info`` and the benchmarks."""

from __future__ import annotations

import os
from pathlib import Path


def tree_bytes(path: str | os.PathLike) -> int:
    """Bytes of all files under ``path`` (0 if it does not exist)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def human_bytes(n: float) -> str:
    """``25051211`` → ``"25.1 MB"`` (powers of 1000, like the rest of the tool's output)."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.2f} TB"
