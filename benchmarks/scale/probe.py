"""The readers' probe of ``make bench-scale``: import, start-up and first batch of a reader, each in a
fresh process that imports nothing of the benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.scale.config import READER_BATCH, READERS

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
    """Import, start-up and first-batch seconds of ``reader`` (one of
    :data:`~benchmarks.scale.config.READERS`) in a fresh process, plus ``process_s``: from
    starting that process to its exit."""
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
