"""The arithmetic of ``make bench-scale``: from the raw figures of the rounds to net per-sample costs,
growth, verify/convert ratios and estimates of the full release."""

from __future__ import annotations

import statistics
from typing import Any, Mapping, Sequence

from benchmarks.scale.config import (
    COMMANDS,
    FIXED_SAMPLES,
    READERS,
    RELEASE_SAMPLES,
    SETS,
    VERIFY_TARGETS,
    WORKERS,
    WORKSTATION_CORES,
    WORKSTATION_DISK_BYTES_PER_S,
)


def net_per_sample(seconds: float, samples: int, fixed_seconds: float, fixed_samples: int = FIXED_SAMPLES) -> float:
    """Seconds per sample beyond the fixed cost: the slope from the fixed set to this one."""
    if samples <= fixed_samples:
        raise ValueError(f"{samples} samples: not more than the fixed set's {fixed_samples}")
    return (seconds - fixed_seconds) / (samples - fixed_samples)


def release_estimate(
    fixed_seconds: float,
    per_sample: float,
    *,
    samples: int = RELEASE_SAMPLES,
    fixed_samples: int = FIXED_SAMPLES,
    workers: int = WORKERS,
    measured_workers: int = WORKERS,
    io_bytes_per_sample: float = 0.0,
    disk_bytes_per_s: float | None = None,
) -> float:
    """Wall seconds of a command on ``samples`` samples with ``workers`` workers.

    The fixed cost as measured (start-up and planning, assumed not to grow with the number of
    workers), plus the per-sample cost measured with ``measured_workers`` scaled by
    ``measured_workers / workers``: linear in cores, assuming the work is CPU-bound in the
    workers, shares out evenly, and each core is as fast as here. With ``disk_bytes_per_s``, the
    per-sample part is never less than the time to move ``io_bytes_per_sample`` a sample at that
    rate (the disk as the bound once there are cores enough). A negative per-sample cost (noise,
    where the command hardly grows) counts as zero.
    """
    rest = samples - fixed_samples
    work = rest * max(0.0, per_sample) * measured_workers / workers
    if disk_bytes_per_s:
        work = max(work, rest * io_bytes_per_sample / disk_bytes_per_s)
    return fixed_seconds + work


def io_bytes_per_sample(which: str, source: float, zarr: float, wds: float) -> float:
    """Bytes a command reads or writes per sample (read-backs of just-written data left out)."""
    return {"convert": source + zarr + wds, "verify sources": source + zarr + wds, "verify manifest": zarr + wds}[which]


def _task_seconds_per_sample(rates: Sequence[float | None]) -> float | None:
    """Seconds per sample of the tasks alone (2 workers in parallel), from the rates the command printed."""
    known = [r for r in rates if r]
    return 1 / statistics.median(known) if known else None


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _spread(values: Sequence[float]) -> float:
    return max(values) - min(values) if values else 0.0


def summarise(raw: Mapping[str, Any]) -> dict:
    """The figures the tables show, from the raw ones :func:`~benchmarks.scale.rounds.run` saves."""
    sets = raw["sets"]
    workers = raw.get("workers", WORKERS)
    release = raw.get("release_samples", RELEASE_SAMPLES)
    cores = raw.get("workstation_cores", WORKSTATION_CORES)
    disk = raw.get("workstation_disk_bytes_per_s", WORKSTATION_DISK_BYTES_PER_S)
    fixed, small, large = (sets[name] for name in SETS)
    commands = {}
    for which in COMMANDS:
        entry: dict[str, Any] = {}
        fixed_s = _median(fixed["commands"][which]["seconds"])
        for name in SETS:
            s = sets[name]
            record = s["commands"][which]
            seconds = _median(record["seconds"])
            net = None if name == "fixed" else net_per_sample(seconds, s["samples"], fixed_s, fixed["samples"])
            entry[name] = {
                "samples": s["samples"],
                "seconds": seconds,
                "seconds_range": [min(record["seconds"]), max(record["seconds"])],
                "samples_per_s": s["samples"] / seconds,
                "net_s_per_sample": net,
                "task_s_per_sample": _task_seconds_per_sample(record.get("task_rate", [])),
                "worker_peak_mb": _median([max(w, default=0.0) for w in record["worker_peak_mb"]]),
                "coordinator_peak_mb": _median(record["coordinator_peak_mb"]),
            }
        per_sample = entry["large"]["net_s_per_sample"]
        n = large["samples"]
        io = io_bytes_per_sample(which, large["source_bytes"] / n, large["zarr_bytes"] / n, large["wds_bytes"] / n)
        small_net = entry["small"]["net_s_per_sample"]
        small_task, large_task = entry["small"]["task_s_per_sample"], entry["large"]["task_s_per_sample"]
        if small_task and large_task:  # the commands' own timing of their tasks: no fixed cost to subtract
            entry["growth"], entry["growth_basis"] = large_task / small_task, "tasks"
        else:
            entry["growth"] = per_sample / small_net if small_net > 0 and per_sample > 0 else None
            entry["growth_basis"] = "net"
        # the small set's time beyond the fixed cost, against how much both moved between rounds
        spread = sum(_spread(sets[name]["commands"][which]["seconds"]) for name in ("fixed", "small"))
        entry["growth_within_noise"] = entry["growth_basis"] == "net" and entry["small"]["seconds"] - fixed_s <= spread
        entry["release_here_s"] = release_estimate(
            fixed_s,
            per_sample,
            samples=release,
            fixed_samples=fixed["samples"],
            workers=workers,
            measured_workers=workers,
        )
        entry["release_workstation_s"] = release_estimate(
            fixed_s,
            per_sample,
            samples=release,
            fixed_samples=fixed["samples"],
            workers=cores,
            measured_workers=workers,
            io_bytes_per_sample=io,
            disk_bytes_per_s=disk,
        )
        entry["io_bytes_per_sample"] = io
        commands[which] = entry
    ratios = {}
    for which in VERIFY_TARGETS:
        ratios[which] = {
            name: _median(
                [
                    v / c
                    for v, c in zip(
                        sets[name]["commands"][which]["seconds"], sets[name]["commands"]["convert"]["seconds"]
                    )
                ]
            )
            for name in SETS
        }
    readers = {}
    for reader in READERS:
        entry = {}
        for name in ("small", "large"):
            figures = sets[name].get("readers", {}).get(reader)
            if figures:
                entry[name] = {k: _median(v) for k, v in figures.items() if k != "samples"}
                entry[name]["split_samples"] = figures["samples"][0] if figures.get("samples") else None
        if "small" in entry and "large" in entry:
            slope = (entry["large"]["startup_s"] - entry["small"]["startup_s"]) / (large["samples"] - small["samples"])
            entry["release_startup_s"] = entry["large"]["startup_s"] + max(0.0, slope) * (release - large["samples"])
        readers[reader] = entry
    manifest: dict[str, Any] = {}
    for name in SETS:
        n, nbytes = sets[name]["samples"], sets[name]["manifest_bytes"]
        manifest[name] = {"samples": n, "bytes": nbytes, "bytes_per_sample": nbytes / n}
    manifest["release_bytes"] = manifest["large"]["bytes_per_sample"] * release
    worker_peak = max(commands[c]["large"]["worker_peak_mb"] for c in COMMANDS)
    per_sample_bytes = (large["source_bytes"] + large["zarr_bytes"] + large["wds_bytes"]) / large["samples"]
    return {
        "commands": commands,
        "verify_ratios": ratios,
        "readers": readers,
        "manifest": manifest,
        "workstation_worker_memory_mb": worker_peak * cores,
        "release_bytes": per_sample_bytes * release,
        "pipeline_release_here_s": commands["convert"]["release_here_s"] + commands["verify sources"]["release_here_s"],
        "pipeline_release_workstation_s": commands["convert"]["release_workstation_s"]
        + commands["verify sources"]["release_workstation_s"],
    }
