"""Samples/s delivered to the GPU: the per-file baseline against our compact streaming reader.

    PYTHONPATH=. python examples/gpu_delivery.py --samples 256 --scratch /tmp/gpu-delivery  # cuda if present
    PYTHONPATH=. python examples/gpu_delivery.py --samples 8 --scratch /tmp/gpu-delivery --device cpu  # dry run

From the repository root: the baseline comes from ``benchmarks/``, which is not installed with ``pipeline``.

One process, one rank (nccl on a GPU, gloo on CPU, as ``train_ddp.py`` runs). Both readers deliver
img + label batches onto the device, in ``DataLoader`` workers with ``pin_memory``: the baseline
``torch.load``s one extracted ``.pt`` per sample (label int64); ours streams the tar shards with
``compact=True`` (label uint8) and widens on the device with ``pipeline.to_device``. Each reader runs
one warm-up epoch, then one timed epoch ending in a device synchronisation. Then our reader again,
three ways of moving batches (``pipeline.to_device``'s choice, docs/BENCHMARKS.md): a plain copy
from the workers' memory, ``DataLoader(pin_memory=True)`` with copies that do not wait, and pinning
each batch on the way (``tensor.pin_memory()`` then a copy that does not wait, what ``to_device``
did before 2026-12). Prints one JSON line.
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


def delivered_per_second(loader: DataLoader, device: torch.device, dtypes: dict, epochs: int = 2, move=None) -> float:
    """Samples/s of the last epoch, counting a batch once its widened tensors are on ``device``."""
    rate = 0.0
    for _ in range(epochs):
        start, samples = time.perf_counter(), 0
        for batch in loader:
            batch = (move or to_device)(batch, device, dtypes)
            samples += len(batch["__key__"])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rate = samples / (time.perf_counter() - start)
    return rate


def pinned_on_the_way(batch: dict, device: torch.device, dtypes: dict) -> dict:
    """The way ``to_device`` moved unpinned batches before 2026-12: pin, then copy without waiting."""
    pinned = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return to_device(pinned, device, dtypes)


def delivery_ways(out: Path, args: argparse.Namespace, device: torch.device) -> dict:
    """Samples/s of our reader for each way of moving its batches to ``device``."""
    rates = {}
    for name, pin, move in (
        ("plain_copy", False, to_device),
        ("pin_memory_loader", True, to_device),
        ("pinned_on_the_way", False, pinned_on_the_way),
    ):
        ds = StreamingDataset(out, fields=FIELDS, batch_size=args.batch_size, compact=True)
        loader = DataLoader(
            ds, batch_size=None, num_workers=args.workers, persistent_workers=args.workers > 0, pin_memory=pin
        )
        rates[f"delivery_{name}_per_s"] = round(delivered_per_second(loader, device, ds.source_dtypes, move=move), 1)
    return rates


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
        if cuda:  # pinning needs a GPU
            result.update(delivery_ways(out, args, device))
        print(json.dumps(result))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
