"""What ``make bench`` reads, besides the converted output: the per-file ``torch.load`` baseline, the
uncompressed ``.npy`` reference point, and the synthetic set they and the readers share (made once,
reused from the scratch folder)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.convert import ConvertOptions, convert
from pipeline.errors import OutputError
from pipeline.schema import FIELDS, sample_key
from pipeline.tools.synth import SynthConfig, write_archive, write_tree

from benchmarks.common import made_once

log = logging.getLogger(__name__)


class TorchLoadDataset(Dataset):
    """The baseline: one extracted ``.pt`` file per sample, loaded with ``torch.load`` on every access.

    ``weights_only=False`` because these are our own synthetic files (trusted); never do this with
    downloaded ones. Returns ``{"__key__": key, field: tensor}`` like the other readers.
    """

    def __init__(self, root: str | Path, fields: Sequence[str]) -> None:
        self.paths = sorted(Path(root).rglob("*.pt"))
        if not self.paths:
            raise FileNotFoundError(f"{root}: no .pt files")
        # <root>/p<patient>/aug<shape>.pt, as extracted from the release
        self.keys = [sample_key(int(p.parent.name[1:]), int(p.stem[3:])) for p in self.paths]
        self.fields = tuple(fields)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        data = torch.load(self.paths[index], weights_only=False)
        return {"__key__": self.keys[index], **{f: torch.as_tensor(data[f]) for f in self.fields}}


class NpyDataset(Dataset):
    """The reference point: every field of every sample an uncompressed ``.npy`` file, loaded
    with ``np.load`` on each access. What reading costs without decoding, at ~9× the zip's bytes."""

    def __init__(self, root: str | Path, fields: Sequence[str]) -> None:
        self.dirs = sorted(p for p in Path(root).iterdir() if p.is_dir())
        self.keys = [d.name for d in self.dirs]
        self.fields = tuple(fields)

    def __len__(self) -> int:
        return len(self.dirs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        folder = self.dirs[index]
        return {"__key__": self.keys[index], **{f: torch.from_numpy(np.load(folder / f"{f}.npy")) for f in self.fields}}


def write_uncompressed(tree: Path, root: Path) -> Path:
    """``root/<key>/<field>.npy`` for every sample of the extracted ``tree`` (kept for reuse)."""

    def write(root: Path) -> None:
        source = TorchLoadDataset(tree, FIELDS)
        for index, key in enumerate(source.keys):
            folder = root / key
            folder.mkdir(parents=True)
            for field, tensor in source[index].items():
                if field != "__key__":
                    np.save(folder / f"{field}.npy", tensor.numpy())

    return made_once(root, write)


def prepare(samples: int, scratch: Path, scheduler: str | None = None) -> tuple[Path, Path]:
    """The extracted tree (for the baseline) and the converted output of a synthetic set of 2
    patients × ``samples // 2`` shapes, reused from ``scratch`` when an earlier run made them;
    converted on ``scheduler`` if given (a Dask address), else on a local cluster."""
    config = SynthConfig(patients=2, shapes=max(1, samples // 2))
    base = Path(scratch) / f"synth-{config.patients}x{config.shapes}"
    base.mkdir(parents=True, exist_ok=True)
    archive = base / "SSMSpine_Train.zip"
    if not archive.is_file():
        write_archive(archive, config)
    tree = made_once(base / "extracted", lambda folder: write_tree(folder, config))
    return tree, converted(archive, base / "out", ConvertOptions(scheduler=scheduler, progress=False))


def prepare_for_speed(out: Path, scheduler: str | None = None) -> Path:
    """The set whose default output :func:`prepare` made in ``out``, converted again with
    ``prefer="speed"`` next to it (or reused from an earlier run)."""
    options = ConvertOptions(scheduler=scheduler, progress=False, prefer="speed")
    return converted(out.parent / "SSMSpine_Train.zip", out.parent / "out-speed", options)


def converted(archive: Path, out: Path, options: ConvertOptions) -> Path:
    """``out``, converted from ``archive`` with ``options`` unless an earlier run did."""
    try:
        convert([archive], out, options)  # a no-op when an earlier run converted it
    except OutputError as exc:  # made by another version or with other options: ours to replace
        log.info("%s: converting again (%s)", out, exc)
        shutil.rmtree(out)
        convert([archive], out, options)
    return out
