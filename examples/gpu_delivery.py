"""Samples/s delivered to the GPU: the per-file baseline against our compact streaming reader.

    PYTHONPATH=. python examples/gpu_delivery.py --samples 256 --scratch /tmp/gpu-delivery  # cuda if present
    PYTHONPATH=. python examples/gpu_delivery.py --samples 8 --scratch /tmp/gpu-delivery --device cpu  # dry run

From the repository root: the baseline comes from ``benchmarks/``, which is not installed with ``pipeline``.

One process, one rank (nccl on a GPU, gloo on CPU, as ``train_ddp.py`` runs). Both readers deliver
img + label batches onto the device, in ``DataLoader`` workers with ``pin_memory``: the baseline
``torch.load``s one extracted ``.pt`` per sample (label int64); ours streams the tar shards with
``compact=True`` (label uint8) and widens on the device with ``pipeline.to_device``. Each reader runs
one warm-up epoch, then one timed epoch ending in a device synchronisation. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from pipeline import StreamingDataset, to_device

from benchmarks.baselines import TorchLoadDataset, prepare

FIELDS = ("img", "label")


def delivered_per_second(loader: DataLoader, device: torch.device, dtypes: dict, epochs: int = 2) -> float:
    """Samples/s of the last epoch, counting a batch once its widened tensors are on ``device``."""
    rate = 0.0
    for _ in range(epochs):
        start, samples = time.perf_counter(), 0
        for batch in loader:
            batch = to_device(batch, device, dtypes)
            samples += len(batch["__key__"])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rate = samples / (time.perf_counter() - start)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--scratch", type=Path, required=True, help="keeps the synthetic set between runs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--scheduler", help="a Dask address to convert on (default: a local cluster)")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29512")
    dist.init_process_group("nccl" if cuda else "gloo", rank=0, world_size=1)
    try:
        tree, out = prepare(args.samples, args.scratch, args.scheduler)
        workers = {"num_workers": args.workers, "persistent_workers": args.workers > 0, "pin_memory": cuda}
        baseline = TorchLoadDataset(tree, FIELDS)
        baseline_loader = DataLoader(baseline, batch_size=args.batch_size, shuffle=True, **workers)
        ours = StreamingDataset(out, fields=FIELDS, batch_size=args.batch_size, compact=True)
        ours_loader = DataLoader(ours, batch_size=None, **workers)
        result = {
            "date": time.strftime("%Y-%m-%d"),
            "device": torch.cuda.get_device_name(device) if cuda else "cpu",
            "samples": len(baseline),
            "baseline_per_s": round(delivered_per_second(baseline_loader, device, {}), 1),
            "streaming_compact_per_s": round(delivered_per_second(ours_loader, device, ours.source_dtypes), 1),
        }
        result["ratio"] = round(result["streaming_compact_per_s"] / result["baseline_per_s"], 2)
        print(json.dumps(result))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
