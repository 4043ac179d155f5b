"""``make bench-convert``: conversion time with 1 and 2 workers against the load-only rate.

Measured on a synthetic archive in the release format. Reported: per system the median seconds
over interleaved repeats and samples/s; the load-only baseline (``torch.load`` of every member
in one process); bytes of each output format against the zip; planning (listing, codec
calibration, creating arrays) and cluster start-up separately, since they do not grow with the
archive; and each worker's peak memory on the archive and on one half its size, which shows that
a worker's memory does not depend on the archive's size. Then the half-size archive's samples
packed four ways (plain deflate, ZipCrypto, WinZip AES-256, Deflate64) by Info-ZIP and 7-Zip, each
archive's conversion rate against the plain one's (see :mod:`benchmarks.packing`).
"""

from __future__ import annotations

import json
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from distributed import Client

from pipeline.cluster import local_cluster
from pipeline.convert import ConvertOptions, convert
from pipeline.sizes import tree_bytes
from pipeline.tools.synth import SynthConfig, write_archive

from benchmarks.common import interleave, load_every_member, machine_description, markdown_table
from benchmarks.packing import MIN_ROUNDS, packed_lines
from benchmarks.packing import run as run_packed
from benchmarks.scale import COMMANDS, VERIFY_TARGETS, command_argv, run_command

BASELINE = "load only (1 process)"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _ConversionRun:
    """One conversion on a fresh local cluster; remembers planning, start-up and worker memory."""

    def __init__(self, archive: Path, workers: int, out: Path) -> None:
        self.archive, self.workers, self.out = archive, workers, out
        self.startup: list[float] = []
        self.planning: list[float] = []
        self.peak_mb: list[float] = []

    def __call__(self) -> float:
        """Seconds the conversion's tasks took (planning and cluster start-up excluded)."""
        shutil.rmtree(self.out, ignore_errors=True)
        started = time.perf_counter()
        with local_cluster(self.workers) as cluster, Client(cluster) as client:
            client.wait_for_workers(self.workers)
            cluster_start = time.perf_counter() - started
            options = ConvertOptions(scheduler=cluster.scheduler_address, progress=False)  # default shard size
            summary = convert([self.archive], self.out, options)
            self.startup.append(cluster_start + summary.startup_seconds)  # + connecting, workers' imports
            self.planning.append(summary.planning_seconds)
            self.peak_mb.append(max(client.run(_peak_rss_mb).values()))
        return summary.converting_seconds


def _archive(scratch: Path, samples: int) -> Path:
    """A synthetic archive of ``samples`` samples, generated once per scratch folder."""
    path = scratch / f"SSMSpine_Train_{samples}.zip"
    if not path.exists():
        write_archive(path, SynthConfig(patients=2, shapes=samples // 2))
    return path


def run(samples: int = 128, repeats: int = 3, scratch: Path | None = None) -> dict:
    """Run the conversion benchmark and return its figures (also printed as tables).

    A temporary scratch (no ``scratch`` given) is removed afterwards: the packed rows' tree and
    archives alone take over a gigabyte.
    """
    if scratch is not None:
        return _measure(samples, repeats, Path(scratch))
    owned = Path(tempfile.mkdtemp(prefix="ssmspine-bench-"))
    try:
        return _measure(samples, repeats, owned)
    finally:
        shutil.rmtree(owned, ignore_errors=True)


def _measure(samples: int, repeats: int, scratch: Path) -> dict:
    archive = _archive(scratch, samples)
    runs = {workers: _ConversionRun(archive, workers, scratch / f"out-{workers}") for workers in (1, 2)}
    systems = {BASELINE: lambda: _timed(load_every_member, archive)}
    systems.update({f"convert, {w} worker{'s' * (w > 1)}": runs[w] for w in runs})
    timings = interleave(systems, repeats)
    half = _ConversionRun(_archive(scratch, samples // 2), 2, scratch / "out-half")
    half()
    commands = whole_commands(archive, scratch / "out-commands", repeats)
    packed = run_packed(scratch, samples // 2, max(repeats, MIN_ROUNDS), workers=2)

    baseline = timings[BASELINE].median
    source_bytes = archive.stat().st_size
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_description(),
        "samples": samples,
        "shard_bytes": ConvertOptions().shard_bytes,
        "source_bytes": source_bytes,
        "zarr_bytes": tree_bytes(runs[2].out / "ssmspine.zarr"),
        "wds_bytes": tree_bytes(runs[2].out / "wds"),
        "seconds": {name: t.seconds for name, t in timings.items()},
        "planning_seconds": {w: r.planning for w, r in runs.items()},
        "startup_seconds": {w: r.startup for w, r in runs.items()},
        "worker_peak_mb": {samples // 2: half.peak_mb, samples: runs[2].peak_mb},
        "encodings": json.loads((runs[2].out / "manifest.json").read_text())["encodings"],
        "commands": commands,
        "packed": packed,
    }
    print(f"conversion of {samples} synthetic samples, {result['machine']}, median of {repeats}")
    print(
        markdown_table(
            ["system", "seconds", "samples/s", "vs load-only"],
            [
                [name, f"{t.median:.2f}", f"{samples / t.median:.1f}", f"{baseline / t.median:.2f}×"]
                for name, t in timings.items()
            ],
        )
    )
    print(
        "not included above: "
        + ", ".join(
            f"{w} worker(s): planning {statistics.median(r.planning):.1f} s, cluster start-up with the "
            f"workers' imports {statistics.median(r.startup):.1f} s"
            for w, r in runs.items()
        )
    )
    print(
        markdown_table(
            ["format", "bytes", "vs source zip"],
            [
                ["source zip", source_bytes, "1.000"],
                ["zarr", result["zarr_bytes"], f"{result['zarr_bytes'] / source_bytes:.3f}"],
                ["wds tar", result["wds_bytes"], f"{result['wds_bytes'] / source_bytes:.3f}"],
            ],
        )
    )
    print(
        f"peak memory per worker: {max(half.peak_mb):.0f} MB on {samples // 2} samples, "
        f"{max(runs[2].peak_mb):.0f} MB on {samples}"
    )
    print(markdown_table(COMMAND_HEADER, command_rows(commands, samples)))
    print("\n".join(packed_lines(packed)))
    return result


COMMAND_HEADER = ["command (2 workers, whole process)", "seconds", "samples/s", "vs convert", "target"]


def whole_commands(archive: Path, out: Path, repeats: int) -> dict[str, list[float]]:
    """Wall seconds of ``ssmspine convert``, ``verify SRC`` and ``verify`` (2 workers), round by round.

    Each round converts into an emptied ``out`` and then verifies that conversion, so the three
    commands of a round meet the same machine load; a ratio is taken within a round.
    """
    seconds: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(repeats):
        shutil.rmtree(out, ignore_errors=True)
        for name in COMMANDS:
            seconds[name].append(run_command(command_argv(name, [archive], out)).seconds)
    return seconds


def command_rows(commands: dict[str, list[float]], samples: int) -> list[list[str]]:
    """Table rows: median seconds and samples/s, and the median of the per-round ratios to ``convert``."""
    rows = []
    for name in COMMANDS:
        target = VERIFY_TARGETS.get(name)
        times = commands[name]
        ratio = statistics.median(t / c for t, c in zip(times, commands["convert"]))
        met = "" if target is None else f"≤ {target} ({'met' if ratio <= target else 'NOT met'})"
        rows.append(
            [
                f"`ssmspine {name}`",
                f"{statistics.median(times):.2f}",
                f"{samples / statistics.median(times):.1f}",
                f"{ratio:.2f}×",
                met,
            ]
        )
    return rows


def _timed(function, *args) -> float:
    started = time.perf_counter()
    function(*args)
    return time.perf_counter() - started
