"""Running ``make bench-scale``: the sets made or found, a warm-up, then every set's commands and
readers in interleaved rounds; returns the raw figures."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from benchmarks.scale.commands import command_argv, run_command
from benchmarks.scale.config import (
    COMMANDS,
    DEFAULT_SCRATCH,
    FIXED_SAMPLES,
    LARGE_SAMPLES,
    READERS,
    RELEASE_SAMPLES,
    SMALL_SAMPLES,
    WORKERS,
    WORKSTATION_CORES,
    WORKSTATION_DISK_BYTES_PER_S,
)
from benchmarks.scale.probe import probe_reader
from benchmarks.scale.render import scale_lines
from benchmarks.scale.sets import archives, layout, make_set, set_name
from benchmarks.scale.summary import summarise


class _SetRuns:
    """Everything measured on one set, round after round."""

    def __init__(self, name: str, folder: Path, out: Path, samples: int, readers: bool) -> None:
        self.name, self.sources, self.out, self.samples = name, archives(folder), out, samples
        self.commands: dict[str, dict[str, list]] = {
            c: {"seconds": [], "task_rate": [], "coordinator_peak_mb": [], "worker_peak_mb": [], "tree_peak_mb": []}
            for c in COMMANDS
        }
        self.readers: dict[str, dict[str, list]] = {r: {} for r in READERS} if readers else {}

    def command(self, which: str) -> float:
        if which == "convert":
            shutil.rmtree(self.out, ignore_errors=True)
        run = run_command(command_argv(which, self.sources, self.out))
        if which != "convert" and "OK" not in run.output:
            raise RuntimeError(f"{which} on {self.out} did not pass:\n{run.output[-4000:]}")
        record = self.commands[which]
        record["seconds"].append(run.seconds)
        record["task_rate"].append(task_rate(run.output))
        record["coordinator_peak_mb"].append(run.coordinator_peak_mb)
        record["worker_peak_mb"].append(run.worker_peak_mb)
        record["tree_peak_mb"].append(run.tree_peak_mb)
        return run.seconds

    def reader(self, which: str) -> float:
        figures = probe_reader(which, self.out)
        for key, value in figures.items():
            self.readers[which].setdefault(key, []).append(value)
        return figures["startup_s"]

    def systems(self) -> dict[str, Any]:
        """The measurements of one round, in order (verify after the convert it checks)."""
        systems: dict[str, Any] = {f"{self.name}: {c}": (lambda c=c: self.command(c)) for c in COMMANDS}
        systems.update({f"{self.name}: {r}": (lambda r=r: self.reader(r)) for r in self.readers})
        return systems

    def result(self, generation: Mapping) -> dict:
        from pipeline.sizes import tree_bytes

        return {
            "samples": self.samples,
            "layout": dict(zip(("train", "test"), layout(self.samples))),
            "source_bytes": sum(p.stat().st_size for p in self.sources),
            "zarr_bytes": tree_bytes(self.out / "ssmspine.zarr"),
            "wds_bytes": tree_bytes(self.out / "wds"),
            "manifest_bytes": (self.out / "manifest.json").stat().st_size,
            "generation": dict(generation),
            "commands": self.commands,
            "readers": self.readers,
        }


def _read_through(paths: Sequence[Path]) -> None:
    """Read files once, so every round finds them in the page cache alike."""
    for path in paths:
        with open(path, "rb") as f:
            while f.read(16 << 20):
                pass


def run(samples: int = LARGE_SAMPLES, repeats: int = 3, scratch: Path | None = None) -> dict:
    """Run the scale benchmark and return its raw figures (also printed as tables).

    ``samples``: the large set's size (more than :data:`~benchmarks.scale.config.SMALL_SAMPLES`).
    ``scratch`` keeps the sets (``sets/``) and the outputs (``out/``) for the next run; default
    ``data/bench-scale``.
    """
    from benchmarks.common import OtherLoad, interleave, machine_description

    if samples <= SMALL_SAMPLES:
        raise ValueError(f"the large set must have more than {SMALL_SAMPLES} samples, got {samples}")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    started = time.perf_counter()
    scratch = Path(scratch or DEFAULT_SCRATCH)
    sizes = {"fixed": FIXED_SAMPLES, "small": SMALL_SAMPLES, "large": samples}
    generation, runs = {}, {}
    for name, n in sizes.items():
        folder, generation[name] = make_set(scratch / "sets", n)
        if generation[name]["made_this_run"]:
            print(f"generated the {name} set ({n} samples) in {generation[name]['seconds']:.0f} s: {folder}")
        runs[name] = _SetRuns(name, folder, scratch / "out" / set_name(n), n, readers=name != "fixed")
    prepared = time.perf_counter() - started
    _read_through([p for r in runs.values() for p in r.sources])
    shutil.rmtree(runs["fixed"].out, ignore_errors=True)
    for which in ("convert", "verify manifest"):  # untimed warm-up: imports, .pyc files, libraries
        run_command(command_argv(which, runs["fixed"].sources, runs["fixed"].out))
    other_load = OtherLoad()
    systems = {key: system for r in runs.values() for key, system in r.systems().items()}
    interleave(systems, repeats)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_description(),
        "workers": WORKERS,
        "repeats": repeats,
        "release_samples": RELEASE_SAMPLES,
        "workstation_cores": WORKSTATION_CORES,
        "workstation_disk_bytes_per_s": WORKSTATION_DISK_BYTES_PER_S,
        "other_load_cores": other_load.cores,
        "sets": {name: r.result(generation[name]) for name, r in runs.items()},
        "prepare_seconds": prepared,
        "bench_seconds": time.perf_counter() - started,
    }
    result["summary"] = summarise(result)
    print("\n".join(scale_lines(result)))
    print(f"benchmark took {result['bench_seconds'] / 60:.1f} min ({prepared:.0f} s of it making or finding the sets)")
    return result


#: What ``convert`` and ``verify`` print about their tasks alone (no planning, no cluster start-up).
_TASK_RATE = re.compile(r"([\d.]+) samples/s (?:converting|checking)")


def task_rate(output: str) -> float | None:
    """Samples per second of a command's tasks alone, as the command reports it (None if it does not)."""
    found = _TASK_RATE.findall(output)
    return float(found[-1]) if found else None
