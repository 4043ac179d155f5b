"""Train a small segmentation net on the tar shards with DistributedDataParallel.

    torchrun --nproc_per_node=2 examples/train_ddp.py data/shards --epochs 2 --workers 2
    torchrun --nproc_per_node=2 examples/train_ddp.py http://host:8000/shards --checkpoint run.pt

Runs on CPU (gloo) or GPU (nccl, one GPU per process). Each rank streams its share of every epoch
from :class:`pipeline.StreamingDataset`; the data position is saved with the model in
``--checkpoint``, so a run stopped part-way (``--max-steps``, Ctrl-C, a lost node) continues with
the samples it had not seen yet — also with another ``--nproc_per_node`` if ``--batch-size``
keeps the global batch the same. Prints samples/s per epoch on rank 0.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from pipeline import LABEL_NAMES, StreamingDataset, to_device


def block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinyUNet(nn.Module):
    """Two-level U-Net: enough to learn vertebra/disc labels on downsampled slices."""

    def __init__(self, classes: int, width: int = 16) -> None:
        super().__init__()
        self.down1, self.down2 = block(1, width), block(width, 2 * width)
        self.bottom = block(2 * width, 4 * width)
        self.up2, self.dec2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2), block(4 * width, 2 * width)
        self.up1, self.dec1 = nn.ConvTranspose2d(2 * width, width, 2, stride=2), block(2 * width, width)
        self.head = nn.Conv2d(width, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.down1(x)
        d2 = self.down2(F.max_pool2d(d1, 2))
        b = self.bottom(F.max_pool2d(d2, 2))
        u2 = self.dec2(torch.cat([self.up2(b), d2], 1))
        u1 = self.dec1(torch.cat([self.up1(u2), d1], 1))
        return self.head(u1)


def prepare(
    batch: dict, size: int, device: torch.device, dtypes: dict[str, torch.dtype]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image → (B, 1, size, size) normalised float; label → (B, size, size) class indices.

    The batch is compact (label as stored, uint8): moved to the device from pinned memory and
    widened there to its source dtypes."""
    batch = to_device(batch, device, dtypes)
    img = batch["img"].float().unsqueeze(1)
    label = batch["label"].reshape(img.shape[0], 1, *img.shape[-2:])
    if size != img.shape[-1]:
        img = F.interpolate(img, size=(size, size), mode="area")
        label = F.interpolate(label.float(), size=(size, size), mode="nearest")
    img = (img - img.mean(dim=(2, 3), keepdim=True)) / img.std(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    return img, label[:, 0].long()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="converted output directory or its URL")
    parser.add_argument("--split", default="train")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4, help="per rank")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers per rank")
    parser.add_argument("--size", type=int, default=128, help="train on slices downsampled to this size")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", type=Path, help="resume from, and save to, this file")
    parser.add_argument("--save-every", type=int, default=50, help="steps between checkpoints")
    parser.add_argument("--max-steps", type=int, help="stop after this many steps (to try resuming)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        # the DataLoader workers decode; leave them the cores this process would otherwise take
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // (world * (1 + args.workers))))
    torch.manual_seed(args.seed)

    ds = StreamingDataset(
        args.data, split=args.split, fields=("img", "label"), seed=args.seed, batch_size=args.batch_size, compact=True
    )
    loader = DataLoader(
        ds, batch_size=None, num_workers=args.workers, persistent_workers=args.workers > 0, pin_memory=cuda
    )
    model = TinyUNet(len(LABEL_NAMES)).to(device)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    optimizer = torch.optim.Adam(ddp.parameters(), lr=args.lr)

    step = 0
    if args.checkpoint and args.checkpoint.exists():
        saved = torch.load(args.checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        ds.load_state_dict(saved["data"])
        step = saved["step"]
        if rank == 0:
            print(
                f"resumed from {args.checkpoint}: epoch {ds.epoch}, {saved['data']['position']} samples "
                f"of it done (saved on {saved['data']['world_size']} ranks, now {world})",
                flush=True,
            )

    def save() -> None:
        if args.checkpoint and rank == 0:  # the data state is the same on every rank
            tmp = args.checkpoint.with_name(args.checkpoint.name + ".tmp")
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "data": ds.state_dict(),
                    "step": step,
                },
                tmp,
            )
            os.replace(tmp, args.checkpoint)

    if rank == 0:
        print(
            f"{world} ranks × batch {args.batch_size}, {args.workers} workers each, {ds.samples} samples, "
            f"{len(ds)} per rank per epoch, on {device}",
            flush=True,
        )
    stopped = False
    for epoch in range(ds.epoch, args.epochs):
        ds.set_epoch(epoch)
        ddp.train()
        started, samples, loss_sum = time.perf_counter(), 0, torch.zeros((), device=device)
        for batch in ds.track(loader):
            img, label = prepare(batch, args.size, device, ds.source_dtypes)
            loss = F.cross_entropy(ddp(img), label)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            samples += img.shape[0]
            loss_sum += loss.detach() * img.shape[0]
            if step % args.save_every == 0:
                save()
            if args.max_steps and step >= args.max_steps:
                stopped = True
                break
        seconds = time.perf_counter() - started
        totals = torch.tensor([samples, loss_sum.item()], dtype=torch.float64, device=device)
        dist.all_reduce(totals)
        if rank == 0 and totals[0] > 0:
            print(
                f"epoch {epoch}: {int(totals[0])} samples in {seconds:.1f} s, {totals[0] / seconds:.1f} samples/s, "
                f"loss {totals[1] / totals[0]:.4f}",
                flush=True,
            )
        save()
        if stopped:
            if rank == 0:
                print(f"stopped after step {step}; run again to continue", flush=True)
            break
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
