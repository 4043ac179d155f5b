"""Per-sample transforms where decoding runs: deterministic from (seed, epoch, key), and so the same
twice, with any number of DataLoader workers, after a mid-epoch resume and after an elastic one.

Every transformed sample is checked against the transform applied here, independently, to the
sample as stock ``webdataset`` decodes it, with the generator of ``(seed, epoch, key)``: that one
comparison proves the result depends on nothing else (order, rank, worker, thread, resumption).
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pipeline import StreamingDataset, ZarrDataset
from pipeline.errors import UsageError
from pipeline.read.transforms import sample_rng

from conftest import assert_bit_exact
from stream_common import SEED, stock_samples

FIELDS = ("label", "shape")
MAIN = os.getpid()
SLOW_WORKERS = pytest.param(2, marks=pytest.mark.slow)


def jitter(sample: dict, rng: np.random.Generator) -> dict:
    """Random roll and flip of the label (new arrays, one a negative-stride view), noise added to
    the landmarks in place, and a field saying where it ran."""
    label = np.roll(sample["label"], int(rng.integers(-40, 40)), axis=-1)
    sample["label"] = label[..., ::-1] if rng.random() < 0.5 else label
    sample["shape"] += rng.normal(size=sample["shape"].shape)
    thread = threading.current_thread().name
    sample["where"] = np.array([os.getpid() != MAIN, thread.startswith("ssmspine-decode")])
    return sample


def expected(stock: dict, key: str, epoch: int, transform=jitter) -> dict[str, np.ndarray]:
    return transform({f: stock[key][f].copy() for f in FIELDS}, sample_rng(SEED, epoch, key))


def rows(item: dict) -> list[tuple[str, bool, dict]]:
    """(key, pad, fields) of every sample of a batch or a single sample."""
    if isinstance(item["__key__"], str):
        return [(item["__key__"], bool(item["__pad__"]), {f: v for f, v in item.items() if not f.startswith("__")})]
    fields = [f for f in item if not f.startswith("__")]
    return [(key, bool(item["__pad__"][j]), {f: item[f][j] for f in fields}) for j, key in enumerate(item["__key__"])]


def assert_augmented(items, stock, epoch: int, workers: int) -> list[str]:
    keys = []
    for item in items:
        for key, _, fields in rows(item):
            keys.append(key)
            want = expected(stock, key, epoch)
            for f in FIELDS:
                assert_bit_exact(fields[f].numpy(), want[f], f"{key}.{f} in epoch {epoch}")
            in_worker, on_decode_thread = fields["where"].tolist()
            assert in_worker == (workers > 0), "in a DataLoader worker when there are workers"
            assert in_worker or on_decode_thread, "never in the loop's own thread"
    return keys


@pytest.fixture(scope="module")
def stock(converted):
    return stock_samples(converted, "train")


@pytest.mark.parametrize("workers", [0, SLOW_WORKERS])
@pytest.mark.parametrize("batch_size", [3, None])
def test_streaming_same_augmentation_every_time_and_for_any_workers(converted, stock, workers, batch_size):
    ds = StreamingDataset(
        converted, fields=FIELDS, seed=SEED, batch_size=batch_size, transform=jitter, decode_threads=2
    )
    loader = DataLoader(ds, batch_size=None, num_workers=workers, persistent_workers=workers > 0)
    for epoch in (1, 2, 1):
        ds.set_epoch(epoch)
        assert sorted(assert_augmented(ds.track(loader), stock, epoch, workers)) == sorted(stock)


def test_streaming_mid_epoch_and_elastic_resume_augment_the_rest_alike(converted, stock):
    """Stop after a batch on 1 rank, resume on 1; stop after a step on 2 ranks, resume on 3 (and 1 → 2)."""

    def run(world: int, state: dict | None, stop: int | None, batch: int) -> tuple[list[str], dict]:
        keys, saved = [], None
        for rank in range(world):
            ds = StreamingDataset(
                converted, fields=FIELDS, seed=SEED, batch_size=batch, transform=jitter, rank=rank, world_size=world
            )
            if state is not None:
                ds.load_state_dict(state)
            ds.set_epoch(3)
            for step, item in enumerate(ds.track(DataLoader(ds, batch_size=None))):
                keys += [key for key, pad, _ in rows(item) if not pad]
                assert_augmented([item], stock, 3, workers=0)
                if step + 1 == stop:
                    break
            saved = ds.state_dict()
        return keys, saved

    for before, after, batch in [(1, 1, 2), (2, 3, 2), (1, 2, 3)]:
        first, state = run(before, None, stop=1, batch=batch)
        assert state["position"] == before * batch
        rest, _ = run(after, state, stop=None, batch=batch)
        assert sorted(first + rest) == sorted(stock), (before, after)


@pytest.mark.parametrize("workers", [0, SLOW_WORKERS])
def test_zarr_same_augmentation_every_time_and_for_any_workers(converted, stock, workers):
    ds = ZarrDataset(converted, fields=FIELDS, transform=jitter, seed=SEED, decode_threads=2)
    loader = DataLoader(ds, batch_size=5, num_workers=workers, persistent_workers=workers > 0)
    for epoch in (1, 2, 1):
        ds.set_epoch(epoch)  # persistent workers follow it
        assert sorted(assert_augmented(loader, stock, epoch, workers)) == sorted(stock)
    single = ds[4]  # in the calling thread: a single sample has no batch to share out
    assert_bit_exact(single["label"].numpy(), expected(stock, ds.keys[4], 1)["label"], "ds[4]")


def crop(sample: dict, rng: np.random.Generator) -> dict:
    """A fixed-size random crop: the results' shape, not the stored one, makes the batch."""
    top, left = rng.integers(0, 512 - 128, size=2)
    return {"label": sample["label"][:, top : top + 128, left : left + 128].astype(np.int16)}


def ragged(sample: dict, rng: np.random.Generator) -> dict:
    size = int(rng.integers(100, 140))
    return {"label": sample["label"][:, :size, :size]}


def test_transforms_may_change_shapes_and_dtypes_but_not_within_a_batch(converted, stock):
    stream = StreamingDataset(converted, fields=FIELDS, seed=SEED, batch_size=4, transform=crop)
    zarr_ds = ZarrDataset(converted, fields=FIELDS, transform=crop, seed=SEED)
    for batches in (list(stream), list(DataLoader(zarr_ds, batch_size=4))):
        assert [set(b) for b in batches] == [{"__key__", "__pad__", "label"}] * 3
        for b in batches:
            assert b["label"].shape == (4, 1, 128, 128) and b["label"].dtype == torch.int16
            for j, key in enumerate(b["__key__"]):
                want = crop({f: stock[key][f].copy() for f in FIELDS}, sample_rng(SEED, 0, key))["label"]
                assert_bit_exact(b["label"][j].numpy(), want, key)
    single = next(iter(StreamingDataset(converted, fields=FIELDS, seed=SEED, transform=ragged)))
    assert single["label"].shape[-1] == single["label"].shape[-2] and 100 <= single["label"].shape[-1] < 140
    with pytest.raises(UsageError, match=r"p0\d_aug\d+: the transform returned label \(1, \d+, \d+\) int64.*one shape"):
        list(StreamingDataset(converted, fields=FIELDS, seed=SEED, batch_size=4, transform=ragged))
    with pytest.raises(UsageError, match=r"one shape and dtype per field"):
        ZarrDataset(converted, fields=FIELDS, transform=ragged)[[0, 1, 2, 3]]


@pytest.mark.parametrize(
    "transform, message",
    [
        (lambda sample, rng: [sample["label"]], "returned a list, not a dict"),
        (lambda sample, rng: {**sample, "__pad__": np.array(True)}, "names beginning __ are the reader's"),
        (lambda sample, rng: {"label": np.array(["a"])}, "label of dtype <U1; numbers or bools only"),
    ],
)
def test_a_transform_that_breaks_the_contract_is_named(converted, transform, message):
    ds = ZarrDataset(converted, fields=FIELDS, transform=transform)
    with pytest.raises(UsageError, match=rf"{ds.keys[2]}: the transform .*{message}"):
        ds[2]


def test_the_generator_is_a_stable_function_of_seed_epoch_and_key():
    draws = {(s, e, k): sample_rng(s, e, k).integers(0, 2**62) for s in (0, 1) for e in (0, 1) for k in ("a", "b")}
    assert len(set(draws.values())) == len(draws), "each of seed, epoch and key matters"
    assert sample_rng(0, 0, "p01_aug001").integers(0, 2**62) == sample_rng(0, 0, "p01_aug001").integers(0, 2**62)
    # fixed across processes and versions: BLAKE2b of the key, not Python's salted hash
    assert sample_rng(7, 3, "p01_aug001").integers(0, 2**31, size=3).tolist() == GOLDEN


GOLDEN = [1465524432, 204039326, 1459747134]  # drawn once; must never change
