"""The HTTP rows of ``python -m benchmarks s3``: ``StreamingDataset`` over HTTP against the same
reader on the local files, in the same run, interleaved.

The benchmark's converted set is served by the URL tests' :class:`RangeServer` (``tests/http_server.py``:
single-range ``Range``, keep-alive, a thread per connection, ``TCP_NODELAY`` as nginx sets it), run in a
process of its own on 127.0.0.1 (a loopback server: the ratios say what our side costs, not what a network
adds), for img+label and all fields, in process and with 2 DataLoader workers (batches of
:data:`~benchmarks.loaders.BATCH_SIZE` at the dataset level, as the reading benchmark times them).
``× local`` is the local files' median seconds over HTTP's; the last column the spread of the per-turn ratios.

Until 2026-12 these rows compared two HTTP clients: a standard-library one (``HttpRangeReader``) against
fsspec's HTTP, which now reads every URL; the figures that decided it are in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from benchmarks.common import markdown_table

#: Where the rows read from; the ratios are against :data:`REFERENCE`.
HTTP = "HTTP, loopback"
REFERENCE = "local files"
WORKERS = (0, 2)

_SERVE = (
    "import sys; sys.path.insert(0, sys.argv[1]); from http_server import RangeHandler, RangeServer; "
    "RangeHandler.disable_nagle_algorithm = True; "
    "server = RangeServer(sys.argv[2]); print(server.url, flush=True); server.serve_forever()"
)


@contextlib.contextmanager
def range_server(root: Path) -> Iterator[str]:
    """The URL tests' Range server for ``root``, in a process of its own."""
    tests = Path(__file__).resolve().parents[1] / "tests"
    server = subprocess.Popen([sys.executable, "-c", _SERVE, str(tests), str(root)], stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip() if server.stdout else ""
        if not url.startswith("http://"):
            raise RuntimeError(f"the Range server for {root} did not start")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def http_rows(out: Path, repeats: int) -> dict:
    """Time every (fields, workers, where) interleaved; return the rows and the other load."""
    from benchmarks.common import OtherLoad
    from benchmarks.loaders import stream_reader, time_readers
    from benchmarks.reading import FIELD_SETS

    with range_server(out) as url:
        readers = [
            stream_reader(root, fields, label, w, name=where)
            for label, fields in FIELD_SETS.items()
            for w in WORKERS
            for where, root in ((REFERENCE, out), (HTTP, url))
        ]
        load = OtherLoad()
        timings = time_readers(readers, repeats)
        other = load.cores
    rows = []
    for r in readers:
        mine = timings[r.name].seconds
        theirs = timings[r.name.replace(r.reader, REFERENCE, 1)].seconds
        rows.append(
            {
                "where": r.reader,
                "fields": r.fields,
                "workers": r.workers,
                "samples_per_s": r.samples / statistics.median(mine),
                "vs_local": statistics.median(theirs) / statistics.median(mine),
                "round_ratios": [t / m for t, m in zip(theirs, mine)],
                "seconds": mine,
            }
        )
    return {"samples": readers[0].samples, "repeats": repeats, "other_load_cores": other, "rows": rows}


def http_lines(http: Mapping[str, Any]) -> list[str]:
    """The table of :func:`http_rows`' figures, with the spread of the per-round ratios."""

    def spread(ratios: Sequence[float]) -> str:
        return f"{min(ratios):.2f}–{max(ratios):.2f}" if ratios else "-"

    table = [
        [
            r["where"],
            r["fields"],
            r["workers"],
            f"{r['samples_per_s']:.1f}",
            f"{r['vs_local']:.2f}×",
            spread(r["round_ratios"]) if r["where"] != REFERENCE else "-",
        ]
        for r in http["rows"]
    ]
    other = http.get("other_load_cores")
    load = "" if other is None else f"; other processes kept {other:.1f} cores busy meanwhile"
    return [
        f"Streaming over HTTP from a Range server on 127.0.0.1, {http['samples']} samples, dataset-level batches, "
        f"median of {http['repeats']} interleaved turns{load}:",
        "",
        markdown_table(["where", "fields", "workers", "samples/s", "× local", "per-turn ratios"], table),
        "",
    ]
