"""The "Scale" tables of ``make bench-scale`` in Markdown, for stdout and ``bench/report.md``."""

from __future__ import annotations

from typing import Any, Mapping

from benchmarks.scale.config import (
    COMMANDS,
    GROWTH_TARGET,
    READER_BATCH,
    READERS,
    RELEASE_SAMPLES,
    SETS,
    VERIFY_TARGETS,
    WORKERS,
    WORKSTATION_CORES,
    WORKSTATION_DISK_BYTES_PER_S,
)
from benchmarks.scale.summary import summarise


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
    from benchmarks.common import markdown_table

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
        "Task ms/sample: the wall time of the command's tasks alone per sample (2 workers in parallel), as the "
        "command itself reports it (`samples/s converting` or `checking`: no planning, no cluster start-up); the "
        "growth compares these where the commands report them, else the net costs.",
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
                _ms(e["small"].get("task_s_per_sample")),
                _ms(e["large"].get("task_s_per_sample")),
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
                f"task ms/sample @{n_s}",
                f"task ms/sample @{n_l}",
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


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"
