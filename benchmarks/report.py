"""``bench/report.md`` and its charts, from the figures the benchmarks saved.

Why a separate step: the benchmarks take minutes and save their raw figures (``bench/convert.json``
from ``make bench-convert``, ``bench/read.json`` from the reading benchmark); the report only reads
them, so it can be regenerated (and its charts restyled) without measuring again, and the README
can link one page and three PNGs: ``throughput.png`` (samples/s per reader and field set),
``conversion.png`` (conversion rate with 1 and 2 workers against loading alone) and ``bytes.png``
(bytes of each format against the source zip), drawn by :mod:`benchmarks.charts`.
``bench/convert.json`` may hold the packed rows too (the same samples as plain deflate, ZipCrypto,
WinZip AES and Deflate64 zips: :mod:`benchmarks.packing`), shown with their targets.
``bench/scale.json`` (``make bench-scale``) adds a "Scale" section of tables (see
:mod:`benchmarks.scale`), ``bench/s3.json`` (``make bench``) an "Object storage" one (see
:mod:`benchmarks.object_storage`). Any of the JSON files may be missing; the report then covers the others.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Mapping, Sequence

from benchmarks.charts import (
    BASELINE_SYSTEM,
    bytes_chart,
    conversion_chart,
    conversion_rates,
    megabytes,
    throughput_chart,
    workers_label,
)
from benchmarks.common import markdown_table
from benchmarks.names import COMPACT, SPEED_COMPACT, STREAMING, UNCOMPRESSED

#: The figures read and the files written, in the bench folder.
CONVERT_JSON = "convert.json"
READ_JSON = "read.json"
SCALE_JSON = "scale.json"
S3_JSON = "s3.json"
REPORT_MD = "report.md"
THROUGHPUT_PNG = "throughput.png"
CONVERSION_PNG = "conversion.png"
BYTES_PNG = "bytes.png"


def _load(path: Path) -> dict | None:
    if not path.is_file():
        return None
    return json.loads(path.read_text())


# ------------------------------------------------------------------------ reading


def _read_section(read: Mapping[str, Any]) -> list[str]:
    rows = [
        [
            r["reader"],
            r["fields"],
            r["workers"],
            f"{r['samples_per_s']:.1f}",
            "-" if r.get("vs_baseline") is None else f"{r['vs_baseline']:.2f}×",
        ]
        for r in read["results"]
    ]
    return [
        "## Reading",
        "",
        f"{read.get('samples', '?')} samples"
        + (f", batches of {read['batch_size']}" if read.get("batch_size") else "")
        + f"; {read.get('machine', 'machine not recorded')}; {read.get('date', '')}.",
        "Ratios are against the per-file `torch.load` baseline measured in the same run (same fields, same workers).",
        "",
        markdown_table(["reader", "fields", "workers", "samples/s", "vs baseline"], rows),
        "",
        f"![samples per second by reader and field set]({THROUGHPUT_PNG})",
        "",
        *_codecs_section(read),
    ]


def _codecs_section(read: Mapping[str, Any]) -> list[str]:
    """Both outputs' sizes against what compact delivery reads from each, in process (no workers):
    img+label against uncompressed ``.npy``, all fields against the default streaming reader."""
    sizes = read.get("output_bytes")
    rate = {(r["reader"], r["fields"]): r["samples_per_s"] for r in read["results"] if r["workers"] == 0}
    if not sizes or not rate:
        return []
    readers = {"size": COMPACT, "speed": SPEED_COMPACT}

    def ratio(reader: str, fields: str, reference: str) -> str:
        mine, theirs = rate.get((reader, fields)), rate.get((reference, fields))
        return f"{mine / theirs:.2f}×" if mine and theirs else "-"

    rows = []
    for prefer, size in sizes.items():
        reader = readers[prefer]
        rows.append(
            [
                f"`--prefer {prefer}`",
                f"{size['wds_bytes'] / size['source_bytes']:.3f}",
                f"{size['zarr_bytes'] / size['source_bytes']:.3f}",
                ratio(reader, "img+label", UNCOMPRESSED),
                ratio(reader, "all", STREAMING),
            ]
        )
    header = ["codecs", "tar vs zip", "zarr vs zip", "compact img+label vs npy", "compact all vs streaming all"]
    return [
        "Compact delivery from outputs converted for size (the default) and for speed, in process, this run:",
        "",
        markdown_table(header, rows),
        "",
    ]


# --------------------------------------------------------------------- conversion


def _convert_section(convert: Mapping[str, Any]) -> list[str]:
    samples = convert["samples"]
    rates = conversion_rates(convert)
    baseline = next((r for name, r, _, _ in rates if name == BASELINE_SYSTEM), None)
    rows = [
        [name, f"{samples / r:.2f}", f"{r:.1f}", f"{r / baseline:.2f}×" if baseline else "-"] for name, r, _, _ in rates
    ]
    repeats = max((len(s) for s in convert["seconds"].values()), default=0)
    lines = [
        "## Conversion",
        "",
        f"{samples} synthetic samples in the release format, tar shards of {megabytes(convert.get('shard_bytes', 0))}; "
        f"{convert.get('machine', 'machine not recorded')}; {convert.get('date', '')}. "
        f"Median of {repeats} interleaved repeats.",
        "",
        markdown_table(["system", "seconds", "samples/s", "vs load-only"], rows),
        "",
    ]
    planning, startup = convert.get("planning_seconds") or {}, convert.get("startup_seconds") or {}
    parts = []
    for w in dict.fromkeys([*planning, *startup]):
        spent = [
            f"{what} {statistics.median(times[w]):.1f} s"
            for what, times in (("planning", planning), ("cluster start-up", startup))
            if times.get(w)
        ]
        if spent:
            parts.append(f"{workers_label(int(w))}: {', '.join(spent)}")
    if parts:
        lines += [f"Not included above (medians; they do not grow with the archive): {'; '.join(parts)}.", ""]
    peak = convert.get("worker_peak_mb") or {}
    if peak:
        parts = [f"{max(mb):.0f} MB on {n} samples" for n, mb in peak.items() if mb]
        lines += [f"Peak memory per worker: {', '.join(parts)}.", ""]
    if convert.get("commands"):
        from benchmarks.conversion import COMMAND_HEADER, command_rows

        lines += [
            "Whole commands as a user runs them (fresh processes, cluster start-up included), the three "
            "in turn in each round; a ratio is the median of the rounds' ratios:",
            "",
            markdown_table(COMMAND_HEADER, command_rows(convert["commands"], samples)),
            "",
        ]
    lines += [f"![conversion rate with 1 and 2 workers]({CONVERSION_PNG})", ""]
    if convert.get("packed"):
        from benchmarks.packing import packed_lines

        lines += ["### Encrypted and Deflate64 sources", "", *packed_lines(convert["packed"]), ""]
    source = convert["source_bytes"]
    formats = (("source zip", source), ("zarr", convert["zarr_bytes"]), ("wds tar", convert["wds_bytes"]))
    rows = [[name, f"{b:,}", f"{b / source:.3f}" if source else "-"] for name, b in formats]
    lines += [
        "## Bytes",
        "",
        markdown_table(["format", "bytes", "vs source zip"], rows),
        "",
        f"![bytes per format against the source]({BYTES_PNG})",
        "",
    ]
    encodings = convert.get("encodings") or {}
    if encodings:
        shuffles = {0: "no", 1: "byte", 2: "bit"}
        rows = [
            [
                f,
                e.get("cname"),
                e.get("clevel"),
                shuffles.get(e.get("shuffle"), e.get("shuffle")),
                _block_size(e.get("blocksize", 0)),
            ]
            for f, e in encodings.items()
        ]
        table = markdown_table(["field", "codec", "level", "shuffle", "blocks"], rows)
        lines += ["Blosc encodings chosen per field:", "", table, ""]
    return lines


def _block_size(nbytes: int) -> str:
    """Blosc block size as written in a plan (0: Blosc's own choice)."""
    if not nbytes:
        return "auto"
    return f"{nbytes >> 20} MiB" if nbytes % (1 << 20) == 0 else f"{nbytes >> 10} KiB"


# -------------------------------------------------------------------------- scale


def _scale_section(scale: Mapping[str, Any]) -> list[str]:
    """How cost grows with the archive: the tables :mod:`benchmarks.scale` prints."""
    from benchmarks.scale import scale_lines

    return ["## Scale", "", *scale_lines(scale)]


# ----------------------------------------------------------------- object storage


def _object_storage_section(s3: Mapping[str, Any]) -> list[str]:
    """Readers and conversion on a loopback S3 server against local files, and the HTTP clients."""
    from benchmarks.object_storage import object_storage_lines

    return [
        "## Object storage",
        "",
        f"{s3.get('samples', '?')} samples; {s3.get('machine', 'machine not recorded')}; {s3.get('date', '')}. "
        "Loopback servers: the ratios measure our side, not a network.",
        "",
        *object_storage_lines(s3),
    ]


# ------------------------------------------------------------------------- report


def write_report(bench_dir: str | Path = "bench") -> Path:
    """Write ``report.md`` and its PNG charts into ``bench_dir`` from the JSON figures there.

    Returns the report's path. Charts whose figures are missing are not drawn (and a stale chart
    from an earlier run is removed, so the folder never shows figures the report does not).
    FileNotFoundError if neither ``convert.json`` nor ``read.json`` exists.
    """
    bench_dir = Path(bench_dir)
    convert = _load(bench_dir / CONVERT_JSON)
    read = _load(bench_dir / READ_JSON)
    scale = _load(bench_dir / SCALE_JSON)
    s3 = _load(bench_dir / S3_JSON)
    if convert is None and read is None and scale is None and s3 is None:
        raise FileNotFoundError(
            f"{bench_dir}: none of {CONVERT_JSON}, {READ_JSON}, {SCALE_JSON}, {S3_JSON}; "
            "run `make bench-convert`, `make bench` or `make bench-scale` first"
        )
    figures = ((CONVERT_JSON, convert), (READ_JSON, read), (SCALE_JSON, scale), (S3_JSON, s3))
    found = [f"`{n}`" for n, d in figures if d is not None]
    sources = " and ".join([", ".join(found[:-1]), found[-1]] if len(found) > 1 else found)
    baseline = "; every rate is reported next to the baseline measured in the same run" if convert or read else ""
    lines = ["# Benchmarks", "", f"Generated by `python -m benchmarks.report` from {sources}{baseline}.", ""]
    charts: dict[str, Any] = {}
    if read is not None and read.get("results"):
        lines += _read_section(read)
        charts[THROUGHPUT_PNG] = lambda p: throughput_chart(read, p)
    if convert is not None:
        lines += _convert_section(convert)
        charts[CONVERSION_PNG] = lambda p: conversion_chart(convert, p)
        charts[BYTES_PNG] = lambda p: bytes_chart(convert, p)
    if scale is not None:
        lines += _scale_section(scale)
    if s3 is not None:
        lines += _object_storage_section(s3)
    for name in (THROUGHPUT_PNG, CONVERSION_PNG, BYTES_PNG):
        if name in charts:
            charts[name](bench_dir / name)
        else:
            (bench_dir / name).unlink(missing_ok=True)
    path = bench_dir / REPORT_MD
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m benchmarks.report [BENCH_DIR]``: regenerate the report, print its path."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0])
    parser.add_argument(
        "bench_dir",
        nargs="?",
        default="bench",
        help="folder of convert.json / read.json / scale.json / s3.json (default bench)",
    )
    args = parser.parse_args(argv)
    print(f"wrote {write_report(args.bench_dir)}")


if __name__ == "__main__":
    main()
