"""One-argument transforms as users write them: a MONAI ``Compose`` and a torchvision-v2-like
module drawing from torch's global generator, handed to the readers as they are.

Every result is compared with the transform applied here, independently, to the sample stock
``webdataset`` decodes, seeded from ``(seed, epoch, key)`` alone: so it depends on nothing else
(threads, DataLoader workers, order), and differs between epochs and seeds.
"""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd, RandAffined
from torch.utils.data import DataLoader

from pipeline import StreamingDataset, ZarrDataset
from pipeline.errors import UsageError
from pipeline.read.transform_kinds import arguments_taken, seed_from
from pipeline.read.transforms import sample_rng

from conftest import assert_bit_exact
from stream_common import SEED, stock_samples

FIELDS = ("img", "label")


def affine() -> Compose:
    """Rotation, shift and zoom of img (bilinear) and label (nearest), into a 64 × 64 window (cheap)."""
    return Compose(
        [
            EnsureChannelFirstd(keys=["img"], channel_dim="no_channel"),
            RandAffined(
                keys=["img", "label"],
                prob=1.0,
                rotate_range=(np.pi,),
                translate_range=(40, 40),
                scale_range=(0.2, 0.2),
                spatial_size=(64, 64),
                mode=("bilinear", "nearest"),
            ),
        ]
    )


class FlipAndNoise(torch.nn.Module):
    """Stands for torchvision v2: ``forward(*inputs)``, its random numbers from the global generators."""

    def forward(self, *inputs):
        (sample,) = inputs
        label = sample["label"].flip(-1) if torch.rand(()) < 0.5 else sample["label"]
        drawn = [*torch.rand(2).tolist(), random.random(), np.random.random()]
        return {"label": label, "drawn": torch.tensor(drawn)}


def monai_expected(stock: dict, key: str, epoch: int, seed: int = SEED) -> dict[str, np.ndarray]:
    mine = affine()
    mine.set_random_state(seed=seed_from(sample_rng(seed, epoch, key)))
    out = mine({f: torch.from_numpy(stock[key][f].copy()) for f in FIELDS})
    return {f: out[f].as_subclass(torch.Tensor).numpy() for f in FIELDS}


def global_expected(stock: dict, key: str, epoch: int) -> dict[str, np.ndarray]:
    seed = seed_from(sample_rng(SEED, epoch, key))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed), random.seed(seed), np.random.seed(seed)
        out = FlipAndNoise()({"label": torch.from_numpy(stock[key]["label"].copy())})
    return {f: v.numpy() for f, v in out.items()}


def outputs(items) -> dict[str, dict[str, np.ndarray]]:
    """``{key: {field: array}}`` of every sample of batches or single samples."""
    got = {}
    for item in items:
        fields = [f for f in item if not f.startswith("__")]
        if isinstance(item["__key__"], str):
            got[item["__key__"]] = {f: item[f].numpy() for f in fields}
        else:
            got.update({key: {f: item[f][j].numpy() for f in fields} for j, key in enumerate(item["__key__"])})
    return got


def assert_as_expected(got: dict, stock: dict, want, what: str) -> None:
    assert sorted(got) == sorted(stock), what
    for key, fields in got.items():
        expected = want(key)
        assert sorted(fields) == sorted(expected), what
        for f, array in fields.items():
            assert_bit_exact(array, expected[f], f"{key}.{f} ({what})")


@pytest.fixture(scope="module")
def stock(converted):
    return stock_samples(converted, "train")


def test_monai_compose_in_the_stream_is_the_same_for_any_threads_and_workers(converted, stock):
    for threads, workers, epoch, seed in [(1, 0, 1, SEED), (3, 0, 1, SEED), (3, 2, 1, SEED), (3, 0, 2, SEED + 1)]:
        ds = StreamingDataset(
            converted, fields=FIELDS, seed=seed, batch_size=4, transform=affine(), decode_threads=threads
        )
        ds.set_epoch(epoch)
        got = outputs(DataLoader(ds, batch_size=None, num_workers=workers))
        what = f"{threads} threads, {workers} workers, epoch {epoch}, seed {seed}"
        assert_as_expected(got, stock, lambda key: monai_expected(stock, key, epoch, seed), what)
    for key, sample in stock.items():
        labels = got[key]["label"]
        assert labels.shape == (1, 64, 64) and set(np.unique(labels)) <= set(np.unique(sample["label"])), "nearest"
        assert len(np.unique(labels)) > 1, key
        one, other = monai_expected(stock, key, 1), monai_expected(stock, key, 2)
        assert not np.array_equal(one["img"], other["img"]), f"{key}: epochs differ"
        assert not np.array_equal(one["img"], monai_expected(stock, key, 1, SEED + 1)["img"]), f"{key}: seeds differ"


def test_monai_compose_in_zarr_dataset_and_after_pickling(converted, stock):
    compose = affine()
    untouched = compose.transforms[1].rand_affine.R.get_state()[1].copy()
    ds = ZarrDataset(converted, fields=FIELDS, transform=compose, seed=SEED, decode_threads=3)
    ds.set_epoch(1)
    for workers in (0, 2):
        got = outputs(DataLoader(ds, batch_size=4, num_workers=workers))
        assert_as_expected(got, stock, lambda key: monai_expected(stock, key, 1), f"{workers} workers")
    assert np.array_equal(compose.transforms[1].rand_affine.R.get_state()[1], untouched), "only copies are called"
    # the per-thread copies made above are not pickled (spawned workers receive the dataset so)
    clone = pickle.loads(pickle.dumps(ds))
    assert "per sample by set_random_state" in repr(clone.transform)
    for got in (outputs([clone[3]]), outputs([clone[[0, 1]]])):
        assert_as_expected(got, {k: stock[k] for k in got}, lambda key: monai_expected(stock, key, 1), "pickled")


def test_a_global_generator_transform_is_seeded_per_sample_and_restores_the_generators(converted, stock):
    for threads in (1, 3):
        ds = StreamingDataset(converted, fields=("label",), seed=SEED, transform=FlipAndNoise(), decode_threads=threads)
        ds.set_epoch(1)
        before = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
        got = outputs(ds)
        after = torch.get_rng_state(), random.getstate(), np.random.get_state()[1]
        assert torch.equal(after[0], before[0]) and after[1] == before[1] and np.array_equal(after[2], before[2])
        assert_as_expected(got, stock, lambda key: global_expected(stock, key, 1), f"{threads} threads")
    assert "one call at a time per process" in repr(ds.transform)
    drawn = {tuple(global_expected(stock, key, 1)["drawn"].tolist()) for key in stock}
    assert len(drawn) == len(stock), "each sample its own numbers"


def two(sample, rng):
    return sample


class TwoModule(torch.nn.Module):
    def forward(self, sample, rng):
        return sample


def variadic(*args):
    return args[0]


def keyword(sample, *, rng):
    return sample


@pytest.mark.parametrize(
    "transform, taken",
    [
        (two, 2),
        (TwoModule(), 2),  # a module's forward, not its __call__(*args, **kwargs), says
        (lambda sample: sample, 1),
        (lambda sample, rng=None: sample, 2),  # an optional generator: called with it, as ever
        (lambda sample, p=0.5: sample, 1),  # an option of its own
        (affine(), 1),  # Compose.__call__(input_, start=0, end=None, ...)
        (EnsureChannelFirstd(keys=["img"], channel_dim="no_channel"), 1),  # __call__(data, lazy=None), not random
        (FlipAndNoise(), 1),  # forward(*inputs), as torchvision v2's
        (variadic, None),
        (keyword, None),
        (lambda a, b, c: a, None),
        (max, None),  # no signature to read
    ],
)
def test_the_signature_decides_the_kind_and_an_unclear_one_is_refused(converted, transform, taken):
    assert arguments_taken(transform) == taken
    if taken is None:
        with pytest.raises(UsageError, match=r"transform \S+: .*def transform\(sample, rng\).*def transform\(sample\)"):
            ZarrDataset(converted, fields=FIELDS, transform=transform)
