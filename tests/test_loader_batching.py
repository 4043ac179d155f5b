"""Batching as users of other loaders write it: whole-sample batches, or an error naming the fix,
never a batch of batches — with no DataLoader workers and with two.

A MosaicML Streaming user gives both the dataset and the DataLoader a ``batch_size``; a map-style
user hands ``ZarrDataset`` a ``BatchSampler`` as ``batch_sampler=``, as ``sampler=`` with
``batch_size=None``, or (a mistake) as ``sampler=`` with a ``batch_size`` too.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from pipeline import StreamingDataset, ZarrDataset
from pipeline.errors import UsageError

from conftest import assert_bit_exact

#: No workers, and two (multi-process: slow). The iterator of an error in a worker is shut down
#: by the cycle collector; its workers still exit at once (tests/test_worker_exit.py).
WORKERS = (0, pytest.param(2, marks=pytest.mark.slow))
FIELDS = ("label", "shape")


def _assert_whole_batches(ds: ZarrDataset, batches: list[dict], batch: int) -> None:
    """Batches of ``batch`` whole samples (the last one shorter), in order, equal to ``ds[i]``."""
    keys = [k for b in batches for k in b["__key__"]]
    assert keys == list(ds.keys)
    assert [len(b["__key__"]) for b in batches][:-1] == [batch] * (len(batches) - 1)
    index = 0
    for b in batches:
        assert set(b) >= {"__key__", *FIELDS}
        for j, key in enumerate(b["__key__"]):
            item = ds[index]
            assert item["__key__"] == key
            for field in FIELDS:
                assert b[field].shape == (len(b["__key__"]), *item[field].shape), (key, field)
                assert_bit_exact(b[field][j].numpy(), item[field].numpy(), f"{key}.{field}")
            index += 1


@pytest.mark.parametrize("workers", WORKERS)
def test_streaming_batched_twice_stops_at_the_first_batch_naming_the_fix(converted, workers):
    ds = StreamingDataset(converted, fields=FIELDS, batch_size=4, seed=0)
    loader = DataLoader(ds, batch_size=4, num_workers=workers)
    with pytest.raises(UsageError, match=r"already yields whole batches \(4 samples each\).*batch_size=None"):
        next(iter(loader))
    # the fix the message names
    batches = list(DataLoader(ds, batch_size=None, num_workers=workers))
    assert [b[FIELDS[0]].shape[0] for b in batches] == [4, 4, 4]


@pytest.mark.parametrize("workers", WORKERS)
def test_streaming_samples_batched_by_the_dataloader(converted, workers):
    ds = StreamingDataset(converted, fields=FIELDS, seed=0)
    batches = list(DataLoader(ds, batch_size=4, num_workers=workers))
    # each worker batches its own samples (6 each with 2 workers: 4 + 2)
    sizes = [4, 4, 4] if workers == 0 else [4, 4, 2, 2]
    assert [b["label"].shape for b in batches] == [torch.Size([n, 1, 512, 512]) for n in sizes]
    assert [len(b["__key__"]) for b in batches] == sizes
    assert sorted(k for b in batches for k in b["__key__"]) == sorted(ds.keys)


@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("how", ["batch_size", "batch_sampler", "sampler, batch_size=None"])
def test_zarr_batch_sampler_gives_whole_sample_batches(converted, workers, how):
    ds = ZarrDataset(converted, fields=FIELDS)
    sampler = BatchSampler(SequentialSampler(ds), 5, drop_last=False)  # 12 samples: 5, 5, 2
    arguments = {
        "batch_size": {"batch_size": 5},
        "batch_sampler": {"batch_sampler": sampler},
        "sampler, batch_size=None": {"sampler": sampler, "batch_size": None},
    }[how]
    _assert_whole_batches(ds, list(DataLoader(ds, num_workers=workers, **arguments)), 5)


@pytest.mark.parametrize("workers", WORKERS)
def test_zarr_batch_sampler_batched_again_stops_at_the_first_batch(converted, workers):
    ds = ZarrDataset(converted, fields=FIELDS)
    loader = DataLoader(ds, sampler=BatchSampler(SequentialSampler(ds), 5, False), batch_size=2, num_workers=workers)
    with pytest.raises(UsageError, match=r"lists of indices.*batch_sampler=.*batch_size=None"):
        next(iter(loader))


def test_zarr_list_index_is_a_whole_batch(converted):
    ds = ZarrDataset(converted, fields=FIELDS)
    for index in ([3, 0, 7], (3, 0, 7), torch.tensor([3, 0, 7])):
        batch = ds[index]
        assert batch["__key__"] == [ds.keys[i] for i in (3, 0, 7)]
        assert torch.equal(batch["label"][2], ds[7]["label"]) and batch["shape"].shape[0] == 3
