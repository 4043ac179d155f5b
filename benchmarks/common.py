"""Helpers shared by the benchmarks: timing, medians, the baseline, table printing, inputs made once,
and how busy the rest of the machine was."""

from __future__ import annotations

import io
import os
import resource
import shutil
import statistics
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
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


def made_once(folder: Path, write: Callable[[Path], None]) -> Path:
    """``folder`` as ``write`` makes it, reused when an earlier run finished it (a ``.complete``
    marker; a folder without one is an interrupted run's, made again)."""
    if not (folder / ".complete").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        write(folder)
        (folder / ".complete").touch()
    return folder


class OtherLoad:
    """How many cores processes other than this one and its children kept busy meanwhile.

    The machine is shared: a figure measured while someone else's job held a core means little,
    above all with DataLoader workers, so the run says how busy the rest of the machine was.
    Linux only (``/proc/stat``); ``cores`` is None elsewhere.
    """

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.machine, self.own = _machine_busy_seconds(), _own_cpu_seconds()

    @property
    def cores(self) -> float | None:
        machine = _machine_busy_seconds()
        if machine is None or self.machine is None:
            return None
        others = (machine - self.machine) - (_own_cpu_seconds() - self.own)
        return max(0.0, others / (time.perf_counter() - self.started))


def _machine_busy_seconds() -> float | None:
    try:
        with open("/proc/stat") as f:
            ticks = [int(t) for t in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    """This process and its finished (joined) children, such as DataLoader workers shut down."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
