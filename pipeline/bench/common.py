"""Helpers shared by the benchmarks: timing, medians, the baseline, and table printing."""

from __future__ import annotations

import io
import os
import statistics
import zipfile
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch


@dataclass
class Timings:
    """Repeated measurements of one system."""

    name: str
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def interleave(systems: dict[str, Callable[[], float]], repeats: int) -> dict[str, Timings]:
    """Run each system ``repeats`` times, round-robin, so drifts in machine load hit all alike.

    Each system returns the seconds it measured itself (excluding its own set-up).
    """
    timings = {name: Timings(name) for name in systems}
    for _ in range(repeats):
        for name, run in systems.items():
            timings[name].seconds.append(run())
    return timings


def load_every_member(archive: str | os.PathLike) -> int:
    """The baseline: ``torch.load`` every ``.pt`` member of a zip, one process, nothing else."""
    count = 0
    with zipfile.ZipFile(archive) as z:
        for name in z.namelist():
            if name.endswith(".pt") and "__MACOSX" not in name:
                torch.load(io.BytesIO(z.read(name)), weights_only=False)
                count += 1
    return count


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_description() -> str:
    import platform

    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, torch {torch.__version__}"
