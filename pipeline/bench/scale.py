"""``make bench-scale``: how the cost of ``convert``, ``verify`` and the readers grows with the archive.

Three synthetic sets in the release layout, each two archives: ``SSMSpine_Train.zip`` (root
``Train``, 4 patients from 1) and ``SSMSpine_Test.zip`` (root ``Test``, 1 patient from 81), about
4:1 like the release (10,000 : 2,500 samples):

* **fixed** — 2 samples (1 + 1): what a command costs whatever the archive's size (interpreter
  and imports, cluster start-up with each worker importing torch, planning, shutting down);
* **small** — 64 samples (52 + 12), the size of the other benchmarks;
* **large** — 640 samples (512 + 128) by default; ``--samples N`` (``make bench-scale
  SCALE_SAMPLES=N``) sets it, e.g. 160 for a quick check.

They are generated once under ``data/bench-scale/`` (each set's two archives in two processes)
and reused; how long that took is kept next to them and reported.

What is measured, for each set, in ``repeats`` rounds (each round runs every set; a set's
commands run in the order below, so each verify checks the conversion of the same round):

* whole commands as a user runs them, each in a fresh process, ``--workers 2 --no-progress``:
  ``ssmspine convert SRC... --out OUT`` (into an emptied ``OUT``), ``ssmspine verify SRC...
  --out OUT`` (against the sources) and ``ssmspine verify --out OUT`` (against the manifest):
  wall time from starting the process to its exit;
* peak memory of each process of the command (see :class:`PeakMemory`): of each Dask worker
  and of the command's own process (the coordinator, which also runs the scheduler);
* for the small and large sets, the readers: ``StreamingDataset(OUT, split="train",
  fields=("img", "label"), batch_size=8)`` and ``ZarrDataset(OUT, "train", fields=("img",
  "label"))``, each in a fresh process (see :data:`_PROBE`): importing the reader, constructing
  the dataset (start-up: whatever the constructor reads, such as the manifest), and the first
  batch of 8 from a fresh iterator of ``DataLoader`` in process (no workers; ZarrDataset in
  random order), which includes what a reader defers to its first batch.
  The OS page cache is warm for all of it: the archives are read once before measuring, and
  every output was just written. Cold-cache figures would add the disk's time to read the bytes.

From the medians of the rounds: samples/s of each command (whole command), its cost per sample
net of the fixed cost (``(t(N) - t(fixed)) / (N - 2)``) at the small and large sizes and their
ratio (the issue's target: at most 1.2×), the ratios verify/convert per round (targets: at most
0.8 against the sources, 0.4 against the manifest), manifest bytes per sample, and estimates of
the full release (:data:`RELEASE_SAMPLES`) here and on a :data:`WORKSTATION_CORES`-core
workstation (see :func:`release_estimate` for the assumptions).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Mapping, Sequence

#: The release: Train 10,000 + Test 2,500 samples.
RELEASE_SAMPLES = 12_500
#: Dask workers of every command measured.
WORKERS = 2
#: The workstation the release estimate is made for.
WORKSTATION_CORES = 16
#: Assumed bandwidth of the workstation's disk for the bytes a command reads and writes (a
#: workstation NVMe SSD under mixed reads and writes; this machine's figures need no such guess).
WORKSTATION_DISK_BYTES_PER_S = 1.5e9
#: Samples of the three sets; the large one is ``run``'s ``samples``.
FIXED_SAMPLES = 2
SMALL_SAMPLES = 64
LARGE_SAMPLES = 640
SETS = ("fixed", "small", "large")
#: Train patients (from 1) and the first Test patient (Test has one), as in the release's numbering.
TRAIN_PATIENTS = 4
TEST_FIRST_PATIENT = 81
COMMANDS = ("convert", "verify sources", "verify manifest")
READERS = ("StreamingDataset", "ZarrDataset")
READER_BATCH = 8
#: The issue's targets: net per-sample cost large/small, and verify's wall time against convert's.
GROWTH_TARGET = 1.2
VERIFY_TARGETS = {"verify sources": 0.8, "verify manifest": 0.4}
#: How often :class:`PeakMemory` looks at the command's processes.
POLL_SECONDS = 0.2
DEFAULT_SCRATCH = Path("data/bench-scale")
GENERATION_JSON = "generation.json"


# ------------------------------------------------------------------------- the sets


def layout(samples: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(patients, shapes) of the Train and of the Test archive of a set of ``samples`` samples.

    Train gets :data:`TRAIN_PATIENTS` patients and about 4/5 of the samples, Test one patient and
    the rest; sets too small for that get one patient in each.
    """
    if samples < 2:
        raise ValueError(f"a set needs at least 2 samples (one per archive), got {samples}")
    shapes = round(samples * 4 / 5 / TRAIN_PATIENTS)
    if shapes < 1 or samples - TRAIN_PATIENTS * shapes < 1:
        return (1, samples - 1), (1, 1)
    return (TRAIN_PATIENTS, shapes), (1, samples - TRAIN_PATIENTS * shapes)


def set_configs(samples: int) -> dict[str, Any]:
    """Archive file name → :class:`~pipeline.tools.synth.SynthConfig` of the set's two archives."""
    from pipeline.tools.synth import SynthConfig

    (train_patients, train_shapes), (test_patients, test_shapes) = layout(samples)
    return {
        "SSMSpine_Train.zip": SynthConfig(patients=train_patients, shapes=train_shapes, root="Train"),
        "SSMSpine_Test.zip": SynthConfig(
            patients=test_patients, shapes=test_shapes, root="Test", first_patient=TEST_FIRST_PATIENT
        ),
    }


def set_name(samples: int) -> str:
    """Folder of a set, named by its layout: ``train4x128-test1x128``."""
    (tp, ts), (sp, ss) = layout(samples)
    return f"train{tp}x{ts}-test{sp}x{ss}"


def _write_archive(path: Path, config: Any) -> float:
    from pipeline.tools.synth import write_archive

    started = time.perf_counter()
    write_archive(path, config)
    return time.perf_counter() - started


def make_set(base: Path, samples: int) -> tuple[Path, dict]:
    """The set's folder (archives made once, see :func:`~pipeline.bench.reading._made_once`) and
    how long generating it took (then or in the run that made it)."""
    from pipeline.bench.reading import _made_once

    made_now = False

    def write(folder: Path) -> None:
        nonlocal made_now
        folder.mkdir(parents=True)
        configs = set_configs(samples)
        started = time.perf_counter()
        with ProcessPoolExecutor(len(configs), mp_context=get_context("spawn")) as pool:
            futures = {name: pool.submit(_write_archive, folder / name, c) for name, c in configs.items()}
            archive_seconds = {name: f.result() for name, f in futures.items()}
        record = {
            "samples": samples,
            "seconds": time.perf_counter() - started,
            "processes": len(configs),
            "archive_seconds": archive_seconds,
            "date": time.strftime("%Y-%m-%d"),
        }
        (folder / GENERATION_JSON).write_text(json.dumps(record, indent=1))
        made_now = True

    folder = _made_once(base / set_name(samples), write)
    record = json.loads((folder / GENERATION_JSON).read_text())
    return folder, {**record, "made_this_run": made_now}


def archives(folder: Path) -> list[Path]:
    return [folder / name for name in ("SSMSpine_Train.zip", "SSMSpine_Test.zip")]


# ------------------------------------------------------------------------- one command


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

    A thread looks every :data:`POLL_SECONDS` at the process and its descendants (psutil) and
    reads each one's ``VmHWM`` from ``/proc/PID/status``: the kernel's own high-water mark of
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
    """The command line of one of :data:`COMMANDS`."""
    common = ["--out", str(out), "--workers", str(WORKERS), "--no-progress"]
    if which == "convert":
        return [*ssmspine(), "convert", *map(str, sources), *common]
    if which == "verify sources":
        return [*ssmspine(), "verify", *map(str, sources), *common]
    if which == "verify manifest":
        return [*ssmspine(), "verify", *common]
    raise ValueError(f"unknown command {which!r}")


# --------------------------------------------------------------------------- readers

#: Run as ``python -c _PROBE KIND OUT SPLIT BATCH`` in a fresh process; prints one JSON line.
#: Nothing of the benchmark is imported, so "import" is the reader's own import (torch & co.).
_PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
kind, out, split, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
fields = ("img", "label")
import torch
from torch.utils.data import DataLoader
if kind == "StreamingDataset":
    from pipeline.read.stream import StreamingDataset
    t1 = time.perf_counter()
    ds = StreamingDataset(out, split=split, fields=fields, batch_size=batch)
    t2 = time.perf_counter()
    first = next(iter(DataLoader(ds, batch_size=None, num_workers=0)))
else:
    from pipeline.read.zarr_dataset import ZarrDataset
    t1 = time.perf_counter()
    ds = ZarrDataset(out, split, fields=fields)
    t2 = time.perf_counter()
    first = next(iter(DataLoader(ds, batch_size=batch, shuffle=True, num_workers=0,
                                 generator=torch.Generator().manual_seed(0))))
t3 = time.perf_counter()
got = len(first["__key__"])
if got != min(batch, len(ds)) or tuple(first["img"].shape[:1]) != (got,):
    raise SystemExit(f"first batch holds {got} samples")
print(json.dumps({"import_s": t1 - t0, "startup_s": t2 - t1, "first_batch_s": t3 - t2, "samples": len(ds)}))
"""


def probe_reader(reader: str, out: Path, split: str = "train", batch: int = READER_BATCH) -> dict:
    """Import, start-up and first-batch seconds of ``reader`` (one of :data:`READERS`) in a fresh
    process, plus ``process_s``: from starting that process to its exit."""
    if reader not in READERS:
        raise ValueError(f"unknown reader {reader!r}")
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, reader, str(out), split, str(batch)], capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"{reader} on {out} failed:\n{(done.stdout + done.stderr)[-4000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process_s": seconds}


# --------------------------------------------------------------------------- the run


class _SetRuns:
    """Everything measured on one set, round after round."""

    def __init__(self, name: str, folder: Path, out: Path, samples: int, readers: bool) -> None:
        self.name, self.sources, self.out, self.samples = name, archives(folder), out, samples
        self.commands: dict[str, dict[str, list]] = {
            c: {"seconds": [], "coordinator_peak_mb": [], "worker_peak_mb": [], "tree_peak_mb": []} for c in COMMANDS
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

    ``samples``: the large set's size (more than :data:`SMALL_SAMPLES`). ``scratch`` keeps the
    sets (``sets/``) and the outputs (``out/``) for the next run; default ``data/bench-scale``.
    """
    from pipeline.bench.common import interleave, machine_description
    from pipeline.bench.reading import _OtherLoad

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
    other_load = _OtherLoad()
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


# ------------------------------------------------------------------ the arithmetic


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


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _spread(values: Sequence[float]) -> float:
    return max(values) - min(values) if values else 0.0


def summarise(raw: Mapping[str, Any]) -> dict:
    """The figures the tables show, from the raw ones :func:`run` saves."""
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
                "worker_peak_mb": _median([max(w, default=0.0) for w in record["worker_peak_mb"]]),
                "coordinator_peak_mb": _median(record["coordinator_peak_mb"]),
            }
        per_sample = entry["large"]["net_s_per_sample"]
        n = large["samples"]
        io = io_bytes_per_sample(which, large["source_bytes"] / n, large["zarr_bytes"] / n, large["wds_bytes"] / n)
        small_net = entry["small"]["net_s_per_sample"]
        entry["growth"] = per_sample / small_net if small_net > 0 and per_sample > 0 else None
        # the small set's time beyond the fixed cost, against how much both moved between rounds
        spread = sum(_spread(sets[name]["commands"][which]["seconds"]) for name in ("fixed", "small"))
        entry["growth_within_noise"] = entry["small"]["seconds"] - fixed_s <= spread
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


# ------------------------------------------------------------------------- rendering


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _met(value: float, target: float) -> str:
    return f"{value:.2f}× ({'met' if value <= target else '**not met**'}, ≤ {target}×)"


def scale_lines(raw: Mapping[str, Any]) -> list[str]:
    """The "Scale" tables in Markdown (for stdout and ``bench/report.md``), without a heading."""
    from pipeline.bench.common import markdown_table

    summary = summarise(raw)
    sets = raw["sets"]
    sizes = {name: sets[name]["samples"] for name in SETS}
    workers = raw.get("workers", WORKERS)
    cores = raw.get("workstation_cores", WORKSTATION_CORES)
    release = raw.get("release_samples", RELEASE_SAMPLES)
    n_s, n_l = sizes["small"], sizes["large"]
    layouts = "; ".join(
        f"{name} {n} (Train {sets[name]['layout']['train'][0]}×{sets[name]['layout']['train'][1]}, "
        f"Test {sets[name]['layout']['test'][0]}×{sets[name]['layout']['test'][1]})"
        for name, n in sizes.items()
    )
    lines = [
        f"Synthetic sets in the release layout (`SSMSpine_Train.zip` + `SSMSpine_Test.zip`; patients × shapes): "
        f"{layouts}. Whole commands, each in a fresh process, `--workers {workers} --no-progress`; "
        f"median of {raw.get('repeats', '?')} interleaved rounds; {raw.get('machine', 'machine not recorded')}; "
        f"{raw.get('date', '')}. Page cache warm.",
        "",
    ]
    rows = []
    for which in COMMANDS:
        entry = summary["commands"][which]
        for name in SETS:
            e = entry[name]
            net = "-" if e["net_s_per_sample"] is None else f"{e['net_s_per_sample'] * 1000:.0f}"
            low, high = e["seconds_range"]
            seconds = f"{e['seconds']:.2f}" + (f" ({low:.1f}–{high:.1f})" if high > low else "")
            rows.append(
                [
                    which,
                    e["samples"],
                    seconds,
                    f"{e['samples_per_s']:.1f}",
                    net,
                    f"{e['worker_peak_mb']:.0f}",
                    f"{e['coordinator_peak_mb']:.0f}",
                ]
            )
    lines += [
        markdown_table(
            ["command", "samples", "seconds", "samples/s", "net ms/sample", "peak MB/worker", "peak MB, coordinator"],
            rows,
        ),
        "",
        f"Net ms/sample: `(t(N) - t({sizes['fixed']})) / (N - {sizes['fixed']})`, the cost beyond what the command "
        f"costs on {sizes['fixed']} samples (interpreter, imports, cluster start-up, planning). Peak memory: the "
        "kernel's high-water mark (VmHWM) of each process; per worker, the larger of the two.",
        "",
    ]
    disk = raw.get("workstation_disk_bytes_per_s", WORKSTATION_DISK_BYTES_PER_S)
    notes = [
        "Seconds: median (slowest–fastest) of the rounds.",
        f"Release estimates: the fixed cost plus {release:,} × the net per-sample cost at {n_l}.",
        f"Here: {workers} workers as measured. On a {cores}-core workstation: {cores} workers, the per-sample cost "
        f"× {workers}/{cores} (linear in cores: CPU-bound work shared out evenly, cores as fast as these, the fixed "
        f"cost unchanged), but never less than moving the command's bytes at {disk / 1e9:.1f} GB/s.",
        f"Convert then verify against the sources: {_duration(summary['pipeline_release_here_s'])} here, "
        f"{_duration(summary['pipeline_release_workstation_s'])} on the workstation, whose {cores} workers would "
        f"need about {summary['workstation_worker_memory_mb'] / 1024:.1f} GB.",
    ]
    if any(e["growth_within_noise"] for e in summary["commands"].values()):
        notes.append(
            f"Within noise: {n_s} samples took no longer than {sizes['fixed']} by more than the rounds' "
            "spread, so that growth says little."
        )
    release_gb = summary["release_bytes"] / 1e9
    notes.append(
        f"The page cache was warm here; the release's sources and outputs (~{release_gb:.0f} GB) exceed "
        "many machines' memory, so these estimates assume the disk keeps up."
    )
    rows = []
    for which in COMMANDS:
        e = summary["commands"][which]
        growth = "-" if e["growth"] is None else _met(e["growth"], GROWTH_TARGET)
        if e["growth_within_noise"]:
            growth += " (within noise)"
        rows.append(
            [
                which,
                f"{e['fixed']['seconds']:.1f}",
                f"{e['small']['net_s_per_sample'] * 1000:.0f}",
                f"{e['large']['net_s_per_sample'] * 1000:.0f}",
                growth,
                _duration(e["release_here_s"]),
                _duration(e["release_workstation_s"]),
            ]
        )
    lines += [
        markdown_table(
            [
                "command",
                f"fixed s ({sizes['fixed']} samples)",
                f"net ms/sample @{n_s}",
                f"net ms/sample @{n_l}",
                f"growth {n_l}/{n_s}",
                f"release ({release:,}), here",
                f"release, {cores} cores",
            ],
            rows,
        ),
        "",
        " ".join(notes),
        "",
    ]
    rows = [
        [which, *[_met(summary["verify_ratios"][which][name], target) for name in SETS]]
        for which, target in VERIFY_TARGETS.items()
    ]
    lines += [
        "Verify's wall time against the conversion's in the same round (whole commands):",
        "",
        markdown_table(["command", *[f"{n} samples" for n in sizes.values()]], rows),
        "",
    ]
    rows = []
    for reader in READERS:
        entry = summary["readers"].get(reader, {})
        for name in ("small", "large"):
            if name in entry:
                e = entry[name]
                rows.append(
                    [
                        reader,
                        sizes[name],
                        e.get("split_samples", "-"),
                        f"{e['import_s']:.2f}",
                        f"{e['startup_s'] * 1000:.0f}",
                        f"{e['first_batch_s'] * 1000:.0f}",
                        f"{e['process_s']:.2f}",
                    ]
                )
    if rows:
        estimates = ", ".join(
            f"{r} {summary['readers'][r]['release_startup_s'] * 1000:.0f} ms"
            for r in READERS
            if "release_startup_s" in summary["readers"].get(r, {})
        )
        lines += [
            markdown_table(
                [
                    "reader",
                    "samples",
                    "train samples",
                    "import s",
                    "start-up ms",
                    f"first batch ({READER_BATCH}) ms",
                    "process s",
                ],
                rows,
            ),
            "",
            "Each in a fresh process, fields img+label, in process (no DataLoader workers); start-up: constructing "
            "the dataset; first batch: from a fresh iterator; process: from starting the interpreter to its exit."
            + (f" Start-up extrapolated linearly to the release: {estimates}." if estimates else ""),
            "",
        ]
    manifest = summary["manifest"]
    rows = [
        [manifest[name]["samples"], f"{manifest[name]['bytes']:,}", f"{manifest[name]['bytes_per_sample']:.0f}"]
        for name in SETS
    ]
    lines += [
        markdown_table(["samples", "manifest.json bytes", "bytes/sample"], rows),
        "",
        f"At {n_l}'s bytes per sample the release's manifest would be {manifest['release_bytes'] / 1e6:.1f} MB.",
        "",
    ]
    generation = [(name, sets[name].get("generation") or {}) for name in SETS]
    parts = [
        f"{name} {g['seconds']:.0f} s ({g['samples']} samples, {g.get('processes', 1)} processes)"
        for name, g in generation
        if g.get("seconds") is not None
    ]
    if parts:
        lines += [f"Generating the synthetic sets (once, then reused): {', '.join(parts)}.", ""]
    other = raw.get("other_load_cores")
    if other is not None:
        lines += [f"Other processes kept {other:.2f} cores busy during the measurements.", ""]
    if raw.get("bench_seconds") is not None:
        lines += [f"The benchmark took {_duration(raw['bench_seconds'])}.", ""]
    return lines
