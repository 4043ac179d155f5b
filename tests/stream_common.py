"""Helpers shared by the StreamingDataset tests: the expected order of keys, and stock webdataset as a reference."""

from __future__ import annotations

import glob
from pathlib import Path

import torch
import webdataset

from pipeline import decode_wds_sample
from pipeline.read.stream.order import (
    rank_samples,
)

from conftest import assert_bit_exact

SEED = 7


def expected_keys(keys, epoch, rank, world, start=0, batch_size=None, drop_last=False, shuffle=True):
    return [keys[i] for i in rank_samples(len(keys), SEED, epoch, rank, world, start, batch_size, drop_last, shuffle)]


def flat_keys(batches):
    keys = []
    for batch in batches:
        k = batch["__key__"]
        keys.extend([k] if isinstance(k, str) else k)
    return keys


def stock_samples(out: Path, split: str) -> dict[str, dict]:
    urls = sorted(glob.glob(str(out / "wds" / f"{split}-*.tar")))
    return {s["__key__"]: decode_wds_sample(s) for s in webdataset.WebDataset(urls, shardshuffle=False)}


def assert_same_as_stock(samples, stock, fields):
    keys = []
    for sample in samples:
        key = sample["__key__"]
        keys.append(key)
        assert set(sample) == {"__key__", "__pad__", *fields}
        for field in fields:
            assert isinstance(sample[field], torch.Tensor)
            assert_bit_exact(sample[field].numpy(), stock[key][field], f"{key}.{field}")
    return keys
