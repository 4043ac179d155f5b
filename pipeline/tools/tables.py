"""Small text helpers shared by ``ssmspine info``'s text view and its numbers: counted nouns,
ratios that may have no denominator, and plain aligned tables."""

from __future__ import annotations

from typing import Sequence


def plural(n: int, noun: str) -> str:
    """``"1 shard"``, ``"3 shards"``: ``n`` and ``noun``, with an ``s`` unless ``n`` is 1."""
    return f"{n} {noun}{'s' * (n != 1)}"


def ratio(part: float, whole: float) -> float | None:
    """``part / whole``, or None when ``whole`` is 0 (an empty source or field has no ratio)."""
    return part / whole if whole else None


def ratio_text(value: float | None) -> str:
    """A ratio to three decimals, ``-`` for None."""
    return "-" if value is None else f"{value:.3f}"


def plain_table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    """Left-aligned first column, right-aligned numbers; plain text, no box drawing."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append(indent + "  ".join(cells).rstrip())
    return lines
