"""One whole command of ``make bench-scale`` (``ssmspine convert`` or ``verify``) in a fresh process:
its command line, its wall time and the peak memory of each of its processes."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from benchmarks.scale.config import POLL_SECONDS, WORKERS


def _high_water_kb(pid: int) -> int | None:
    """The kernel's peak resident set of ``pid`` (``VmHWM``), None once it has exited."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


class PeakMemory:
    """Peak RSS of a command's process and of each of its descendant processes (Dask workers).

    A thread looks every :data:`~benchmarks.scale.config.POLL_SECONDS` at the process and its
    descendants (psutil) and reads each one's ``VmHWM`` from ``/proc/PID/status``: the kernel's own high-water mark of
    its resident set, so a short peak between two looks is not missed; only growth in the last
    look's interval before a process exits could be (workers then shut down, they do not
    allocate). Where ``/proc`` lacks it, the current RSS is sampled instead (a lower bound).
    Descendants running ``multiprocessing.spawn`` are the Dask workers (the nannies run inside
    the command's process); the resource tracker is left out. The command's own process holds
    the client, the scheduler and the nannies: reported as the coordinator.

    As a cross-check, :func:`run_command` also keeps ``ru_maxrss`` from ``wait4`` (the largest
    peak among the process and every descendant it reaped). It is an upper bound only: Linux
    keeps a process's high-water mark across ``exec``, so it also counts this benchmark's own
    resident set at the fork (~300 MB once torch is imported). Where the command's processes
    grow beyond that (convert, verify against the sources) it matched the largest peak seen
    here within a few MB.
    """

    def __init__(self, pid: int) -> None:
        import psutil

        self._psutil = psutil
        self.pid = pid
        self.peak_kb: dict[int, int] = {}
        self.kind: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"peak-memory-{pid}", daemon=True)
        self._thread.start()

    def _look(self) -> None:
        psutil = self._psutil
        try:
            root = psutil.Process(self.pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        for p in processes:
            if p.pid not in self.kind:
                try:
                    cmdline = " ".join(p.cmdline())
                except psutil.Error:
                    continue
                self.kind[p.pid] = (
                    "coordinator"
                    if p.pid == self.pid
                    else "tracker"
                    if "resource_tracker" in cmdline
                    else "worker"
                    if "spawn_main" in cmdline
                    else "other"
                )
            kb = _high_water_kb(p.pid)
            if kb is None:
                try:
                    kb = p.memory_info().rss >> 10
                except psutil.Error:
                    continue
            self.peak_kb[p.pid] = max(kb, self.peak_kb.get(p.pid, 0))

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._look()
            self._stop.wait(POLL_SECONDS)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def mb(self, kind: str) -> list[float]:
        """Peaks in MB (2**20 bytes) of the processes of ``kind``, largest first."""
        return sorted((kb / 1024 for pid, kb in self.peak_kb.items() if self.kind.get(pid) == kind), reverse=True)


@dataclass
class CommandRun:
    """One run of a command: wall seconds and peak memory."""

    seconds: float
    coordinator_peak_mb: float
    worker_peak_mb: list[float]
    tree_peak_mb: float  # ru_maxrss from wait4: an upper bound, see PeakMemory
    output: str = field(repr=False, default="")


def run_command(argv: Sequence[str]) -> CommandRun:
    """Run ``argv`` in a fresh process and time it; RuntimeError (with its output) if it fails."""
    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        process = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT)
        memory = PeakMemory(process.pid)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        memory.stop()
        process.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read().decode(errors="replace")
    if process.returncode:
        raise RuntimeError(f"{' '.join(map(str, argv))} exited with {process.returncode}:\n{output[-4000:]}")
    coordinator = memory.mb("coordinator")
    return CommandRun(
        seconds, coordinator[0] if coordinator else 0.0, memory.mb("worker"), usage.ru_maxrss / 1024, output
    )


def ssmspine() -> list[str]:
    """The ``ssmspine`` command next to this interpreter, as ``make`` installs it; else the module."""
    script = Path(sys.executable).with_name("ssmspine")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "pipeline.cli"]


def command_argv(which: str, sources: Sequence[Path], out: Path) -> list[str]:
    """The command line of one of :data:`~benchmarks.scale.config.COMMANDS`."""
    common = ["--out", str(out), "--workers", str(WORKERS), "--no-progress"]
    if which == "convert":
        return [*ssmspine(), "convert", *map(str, sources), *common]
    if which == "verify sources":
        return [*ssmspine(), "verify", *map(str, sources), *common]
    if which == "verify manifest":
        return [*ssmspine(), "verify", *common]
    raise ValueError(f"unknown command {which!r}")
