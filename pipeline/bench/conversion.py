"""``make bench-convert``: conversion wall time with 1 and 2 workers against the load-only rate.

Measured on a synthetic archive in the release format (default 64 samples). Reported: per
system the median seconds over interleaved repeats and samples/s; the load-only baseline
(``torch.load`` of every member in one process); bytes of each output format against the zip;
cluster start-up separately; and each worker's peak memory on the archive and on one twice its
size, which shows that a worker's memory depends on the shard size, not on the archive's.
"""

from __future__ import annotations

import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

from distributed import Client

from ..cluster import local_cluster
from ..convert import ConvertOptions, convert, tree_bytes
from ..synth import SynthConfig, write_archive
from .common import interleave, load_every_member, machine_description, markdown_table

#: Small enough that 64 samples make a dozen tasks to share between 2 workers.
BENCH_SHARD_BYTES = 8_000_000


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _ConversionRun:
    """One conversion on a fresh local cluster; remembers start-up time and worker memory."""

    def __init__(self, archive: Path, workers: int, out: Path) -> None:
        self.archive, self.workers, self.out = archive, workers, out
        self.startup: list[float] = []
        self.peak_mb: list[float] = []

    def __call__(self) -> float:
        shutil.rmtree(self.out, ignore_errors=True)
        started = time.perf_counter()
        with local_cluster(self.workers) as cluster, Client(cluster) as client:
            client.wait_for_workers(self.workers)
            self.startup.append(time.perf_counter() - started)
            begun = time.perf_counter()
            convert([self.archive], self.out, ConvertOptions(shard_bytes=BENCH_SHARD_BYTES,
                                                        scheduler=cluster.scheduler_address, progress=False))  # fmt: skip
            seconds = time.perf_counter() - begun
            self.peak_mb.append(max(client.run(_peak_rss_mb).values()))
        return seconds


def run(samples: int = 64, repeats: int = 3, scratch: Path | None = None) -> dict:
    """Run the conversion benchmark and return its figures (also printed as a table)."""
    scratch = Path(scratch or tempfile.mkdtemp(prefix="ssmspine-bench-"))
    patients = 2
    archive = write_archive(scratch / "SSMSpine_Train.zip", SynthConfig(patients=patients, shapes=samples // patients))
    runs = {workers: _ConversionRun(archive, workers, scratch / f"out-{workers}") for workers in (1, 2)}
    systems = {"load only (1 process)": lambda: _timed(load_every_member, archive)}
    systems.update({f"convert, {w} worker{'s' * (w > 1)}": runs[w] for w in runs})
    timings = interleave(systems, repeats)

    double = write_archive(scratch / "double.zip", SynthConfig(patients=2 * patients, shapes=samples // patients))
    double_run = _ConversionRun(double, 2, scratch / "out-double")
    double_run()

    baseline = timings["load only (1 process)"].median
    out = runs[2].out
    source_bytes = archive.stat().st_size
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_description(),
        "samples": samples,
        "shard_bytes": BENCH_SHARD_BYTES,
        "source_bytes": source_bytes,
        "zarr_bytes": tree_bytes(out / "ssmspine.zarr"),
        "wds_bytes": tree_bytes(out / "wds"),
        "seconds": {name: t.seconds for name, t in timings.items()},
        "startup_seconds": {w: r.startup for w, r in runs.items()},
        "worker_peak_mb": {samples: runs[2].peak_mb, 2 * samples: double_run.peak_mb},
        "encodings": json.loads((out / "manifest.json").read_text())["encodings"],
    }
    rows = [
        [name, f"{t.median:.2f}", f"{samples / t.median:.1f}", f"{baseline / t.median:.2f}×"]
        for name, t in timings.items()
    ]
    print(f"conversion of {samples} synthetic samples, {result['machine']}, median of {repeats}")
    print(markdown_table(["system", "seconds", "samples/s", "vs load-only"], rows))
    print(f"cluster start-up (excluded above): {', '.join(f'{w} worker(s) {min(r.startup):.1f} s' for w, r in runs.items())}")
    print(markdown_table(["format", "bytes", "vs source zip"], [
        ["source zip", source_bytes, "1.000"],
        ["zarr", result["zarr_bytes"], f"{result['zarr_bytes'] / source_bytes:.3f}"],
        ["wds tar", result["wds_bytes"], f"{result['wds_bytes'] / source_bytes:.3f}"],
    ]))  # fmt: skip
    print(f"peak memory per worker: {max(runs[2].peak_mb):.0f} MB on {samples} samples, "
          f"{max(double_run.peak_mb):.0f} MB on {2 * samples}")  # fmt: skip
    return result


def _timed(function, *args) -> float:
    started = time.perf_counter()
    function(*args)
    return time.perf_counter() - started
