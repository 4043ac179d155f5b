"""The charts of ``bench/report.md``: samples/s per reader and field set, the conversion rate against
loading alone, and the bytes of each format against the source zip.

Charts are drawn on :class:`matplotlib.figure.Figure` directly (no ``pyplot``, no display), and
saved without version metadata, so an unchanged chart gives unchanged bytes.
"""

from __future__ import annotations

import io
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from benchmarks.names import AUGMENTED

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Bar colours per field set of the reading benchmark (anything else gets grey).
FIELD_SET_COLOURS = {"img+label": "#4363d8", "all": "#f58231", AUGMENTED: "#3cb44b"}
#: The load-only system of ``bench/convert.json``: what conversion rates are compared with.
BASELINE_SYSTEM = "load only (1 process)"


def megabytes(n: float) -> str:
    """``n`` bytes in MB (10**6 bytes), one decimal: ``"1.5 MB"``."""
    return f"{n / 1e6:.1f} MB"


def workers_label(n: int) -> str:
    """``"1 worker"``, ``"2 workers"``."""
    return f"{n} worker{'s' * (n != 1)}"


def conversion_rates(convert: Mapping[str, Any]) -> list[tuple[str, float, float, float]]:
    """(system, median samples/s, slowest, fastest) per system of ``bench/convert.json``, in the file's order."""
    samples = convert["samples"]
    out = []
    for name, seconds in convert["seconds"].items():
        if seconds:
            out.append((name, samples / statistics.median(seconds), samples / max(seconds), samples / min(seconds)))
    return out


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, facecolor="white", layout="constrained")


def _save(fig: Figure, path: Path) -> Path:
    """PNG without version metadata, so an unchanged chart gives unchanged bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    path.write_bytes(buffer.getvalue())
    return path


def throughput_chart(read: Mapping[str, Any], path: Path) -> Path:
    """Horizontal bars of samples/s, one group per (reader, workers), one bar per field set,
    each labelled with its rate and its ratio to the baseline."""
    results = list(read["results"])
    groups: list[tuple[str, int]] = []
    for r in results:
        if (r["reader"], r["workers"]) not in groups:
            groups.append((r["reader"], r["workers"]))
    seen = list(dict.fromkeys(r["fields"] for r in results))
    field_sets = [f for f in FIELD_SET_COLOURS if f in seen] + [f for f in seen if f not in FIELD_SET_COLOURS]
    bar = 0.8 / max(1, len(field_sets))
    fig = _new_figure(9, 1.2 + 0.5 * len(groups) * max(1, len(field_sets)))
    ax = fig.add_subplot()
    top = max((r["samples_per_s"] for r in results), default=1.0)
    for j, fields in enumerate(field_sets):
        rows = [(groups.index((r["reader"], r["workers"])), r) for r in results if r["fields"] == fields]
        ys = [g + (j - (len(field_sets) - 1) / 2) * bar for g, _ in rows]
        values = [r["samples_per_s"] for _, r in rows]
        ax.barh(ys, values, height=bar * 0.9, color=FIELD_SET_COLOURS.get(fields, "0.6"), label=f"fields: {fields}")
        for y, (_, r) in zip(ys, rows):
            note = f" {r['samples_per_s']:.0f}/s"
            if r.get("vs_baseline") is not None:
                note += f" ({r['vs_baseline']:.1f}×)"
            ax.text(r["samples_per_s"], y, note, va="center", fontsize=8)
    ax.set_yticks(range(len(groups)), [f"{reader}, {workers_label(w) if w else 'in process'}" for reader, w in groups])
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.3)
    ax.set_xlabel("samples per second (higher is better)")
    ax.set_title(f"reading {read.get('samples', '?')} samples — {read.get('date', '')}", fontsize=10)
    fig.legend(loc="outside upper right", fontsize=8, ncol=len(field_sets), frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, path)


def conversion_chart(convert: Mapping[str, Any], path: Path) -> Path:
    """Samples/s of loading alone and of converting with 1 and 2 workers (median, min–max whiskers)."""
    rates = conversion_rates(convert)
    baseline = next((r for name, r, _, _ in rates if name == BASELINE_SYSTEM), None)
    fig = _new_figure(8, 1.0 + 0.55 * len(rates))
    ax = fig.add_subplot()
    ys = range(len(rates))
    medians = [r for _, r, _, _ in rates]
    errors = [[r - low for _, r, low, _ in rates], [high - r for _, r, _, high in rates]]
    colours = ["0.6" if name == BASELINE_SYSTEM else "#3cb44b" for name, *_ in rates]
    ax.barh(ys, medians, xerr=errors, color=colours, height=0.6, capsize=3, error_kw={"elinewidth": 0.8})
    for y, (name, r, _, high) in zip(ys, rates):
        note = f" {r:.1f}/s" + (f" ({r / baseline:.2f}× load-only)" if baseline and name != BASELINE_SYSTEM else "")
        ax.text(high, y, note, va="center", fontsize=8)
    ax.set_yticks(list(ys), [name for name, *_ in rates])
    ax.invert_yaxis()
    ax.set_xlim(0, max((h for *_, h in rates), default=1.0) * 1.45)
    ax.set_xlabel("samples per second (median of interleaved repeats; whiskers: slowest–fastest)")
    ax.set_title(f"converting {convert['samples']} synthetic samples — {convert.get('date', '')}", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, path)


def bytes_chart(convert: Mapping[str, Any], path: Path) -> Path:
    """Bytes of the source zip, the Zarr store and the tar shards, each with its ratio to the zip."""
    source = convert["source_bytes"]
    items = [("source zip", source), ("Zarr store", convert["zarr_bytes"]), ("WebDataset tars", convert["wds_bytes"])]
    fig = _new_figure(7, 2.4)
    ax = fig.add_subplot()
    ax.barh(range(3), [b / 1e6 for _, b in items], color=["0.6", "#4363d8", "#f58231"], height=0.6)
    for y, (_, b) in enumerate(items):
        ax.text(
            b / 1e6,
            y,
            f" {megabytes(b)} ({b / source:.3f}×)" if source else f" {megabytes(b)}",
            va="center",
            fontsize=8,
        )
    ax.set_yticks(range(3), [name for name, _ in items])
    ax.invert_yaxis()
    ax.set_xlim(0, max(b for _, b in items) / 1e6 * 1.35)
    ax.set_xlabel("MB on disk")
    ax.set_title(f"{convert['samples']} synthetic samples: bytes per format against the source", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, path)
