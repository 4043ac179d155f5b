"""Mixing sources and taking subsets: the order's arithmetic (pure), then both readers on the small outputs.

The ``converted`` fixture has train (patients 1 and 2, 6 shapes each) and test (patient 81, 3 shapes).
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from torch.utils.data import DataLoader

from pipeline import SampleRecord, Source, StreamingDataset, ZarrDataset
from pipeline.errors import NotFoundError, SampleKeyError, UsageError
from pipeline.read.stream.mixing import Mixture, source_counts, source_draws
from pipeline.read.stream.order import epoch_order, rank_rows
from pipeline.read.transforms import sample_rng

from conftest import assert_bit_exact, manifest_json, write_manifest_json
from stream_common import SEED, flat_keys, stock_samples

# --------------------------------------------------------------------------- pure arithmetic


def test_counts_split_the_epoch_exactly_by_largest_remainder():
    assert source_counts(10, [1, 1, 2]) == [3, 2, 5], "2.5, 2.5, 5: the tie goes to the earlier source"
    assert source_counts(7, [0.5, 0.25, 0.25]) == [3, 2, 2], "3.5, 1.75, 1.75: the largest remainders"
    rng = np.random.default_rng(0)
    for _ in range(200):
        weights = rng.uniform(0.01, 5, rng.integers(1, 6)).tolist()
        size = int(rng.integers(1, 500))
        counts = source_counts(size, weights)
        exact = [size * w / sum(weights) for w in weights]
        assert sum(counts) == size and all(abs(c - e) < 1 for c, e in zip(counts, exact))


def test_draws_use_every_sample_evenly_within_an_epoch():
    for size, count in [(5, 3), (5, 5), (5, 13), (1, 4)]:
        drawn = Counter(source_draws(size, count, SEED, 2, 1).tolist())
        assert sum(drawn.values()) == count and set(drawn) <= set(range(size))
        times = [drawn.get(i, 0) for i in range(size)]
        assert max(times) - min(times) <= 1, (size, count, times)
    assert source_draws(5, 7, SEED, 0, 0, shuffle=False).tolist() == [0, 1, 2, 3, 4, 0, 1]


def test_an_epoch_holds_each_source_in_its_proportion_and_depends_on_seed_and_epoch_only():
    mixture = Mixture.of([12, 3], [3.0, 1.0], 20)
    assert mixture.counts == (15, 5) and mixture.samples == 20 and not mixture.plain
    for epoch in range(3):
        order = mixture.order(SEED, epoch)
        assert len(order) == 20
        assert np.count_nonzero(order < 12) == 15 and np.count_nonzero(order >= 12) == 5, "exact every epoch"
        assert np.array_equal(order, Mixture.of([12, 3], [6, 2], 20).order(SEED, epoch)), "weights are relative"
    assert not np.array_equal(mixture.order(SEED, 0), mixture.order(SEED, 1)), "each epoch its own order"
    assert not np.array_equal(mixture.order(SEED, 0), mixture.order(SEED + 1, 0))
    test_rows = mixture.order(SEED, 0) >= 12
    assert not np.array_equal(np.sort(test_rows), test_rows), "the sources' draws are shuffled together"
    assert not np.array_equal(source_draws(12, 5, SEED, 0, 0), source_draws(12, 5, SEED, 1, 0)), "a new part each epoch"
    assert mixture.order(SEED, 0, shuffle=False).tolist() == [*range(12), 0, 1, 2, 12, 13, 14, 12, 13]
    assert mixture.describe(["train", "test"]) == "train:15/12 + test:5/3"


def test_a_whole_source_or_a_concatenation_keeps_the_plain_epoch_order():
    for sizes in ([12], [12, 3]):
        mixture = Mixture.of(sizes, [None] * len(sizes), None)
        assert mixture.plain and mixture.describe(["a"] * len(sizes)) is None
        for epoch in range(3):
            assert np.array_equal(mixture.order(SEED, epoch), epoch_order(sum(sizes), SEED, epoch))
    assert Mixture.of([12], [2.5], None).plain, "one weighted source over its own size"


def test_mixture_misuse():
    with pytest.raises(UsageError, match="every source a weight, or none"):
        Mixture.of([3, 4], [1.0, None], None)
    with pytest.raises(UsageError, match="epoch_size must be at least 1"):
        Mixture.of([3], [None], 0)
    with pytest.raises(UsageError, match="positive"):
        Mixture.of([3, 4], [1.0, 0.0], 10)
    with pytest.raises(UsageError, match="epoch_size must be an int"):
        Mixture.of([3], [None], 2.5)


# --------------------------------------------------------------------------- the streaming reader


def _mix(converted, **options) -> StreamingDataset:
    sources = [Source(converted, "train", weight=3), Source(converted, "test", weight=1)]
    return StreamingDataset(sources, fields=("label",), seed=SEED, epoch_size=20, **options)


def test_a_mixture_streams_its_proportions_bit_exact(converted):
    ds = _mix(converted, batch_size=4)
    stock = {**stock_samples(converted, "train"), **stock_samples(converted, "test")}
    assert ds.samples == len(ds) == 20 and len(ds.keys) == 15 and ds.split == "train+test"
    for epoch in range(2):
        ds.set_epoch(epoch)
        batches = list(ds)
        keys = flat_keys(batches)
        assert keys == [ds.keys[i] for i in ds._mixture.order(SEED, epoch)]
        assert sum(k.startswith("p81") for k in keys) == 5, "test: 5 of 20, every epoch"
        assert max(Counter(keys).values()) == 2, "each sample at most once more than any other of its source"
        for batch in batches:
            for key, label in zip(batch["__key__"], batch["label"]):
                assert_bit_exact(label.numpy(), stock[key]["label"], key)
    state = ds.state_dict()
    assert state["mixture"] == "train:15/12 + test:5/3" and state["samples"] == 20


def test_one_whole_output_keeps_its_order_and_state(converted):
    """Nothing changes for a dataset without sources: today's order, today's identity (mixture None)."""
    ds = StreamingDataset(converted, fields=("label",), seed=SEED)
    assert [s["__key__"] for s in ds] == [ds.keys[i] for i in epoch_order(12, SEED, 0)]
    state = ds.state_dict()
    assert (state["split"], state["samples"], state["mixture"]) == ("train", 12, None)
    old = {k: v for k, v in state.items() if k not in ("mixture", "ended_epoch")}  # as saved before mixtures
    ds.load_state_dict(old)
    same = StreamingDataset([Source(converted, "train")], fields=("label",), seed=SEED)
    same.load_state_dict(state)


def test_ranks_and_workers_cover_the_mixture_exactly(converted):
    """2 ranks × 2 DataLoader workers: every position of the epoch's order once, none twice."""
    whole = _mix(converted)
    keys, positions = whole.keys, whole._mixture.order(SEED, 1)
    seen = []
    for rank in range(2):
        ds = _mix(converted, batch_size=3, rank=rank, world_size=2)
        ds.set_epoch(1)
        loader = DataLoader(ds, batch_size=None, num_workers=2 if rank == 0 else 0)
        items = list(loader)
        got = flat_keys(items)
        assert got == [keys[i] for i in rank_rows(positions, 0, rank, 2, 3)], "the rank's share, in order"
        seen += [k for item in items for k, pad in zip(item["__key__"], item["__pad__"].tolist()) if not pad]
    assert Counter(seen) == Counter(keys[i] for i in positions), "no repeats, no gaps"


def test_mid_epoch_resume_onto_another_world_size(converted):
    """2 ranks stop after one batch each; 3 ranks finish the epoch from the saved state."""
    first = [_mix(converted, batch_size=2, rank=r, world_size=2) for r in range(2)]
    seen, states = [], []
    for ds in first:
        ds.set_epoch(3)
        for batch in ds.track(DataLoader(ds, batch_size=None)):
            seen += batch["__key__"]
            break
        states.append(ds.state_dict())
    assert states[0] == states[1] and states[0]["position"] == 4
    rest = []
    for rank in range(3):
        ds = _mix(converted, batch_size=2, rank=rank, world_size=3)
        ds.load_state_dict(json.loads(json.dumps(states[0])))
        ds.set_epoch(3)
        for batch in ds.track(DataLoader(ds, batch_size=None)):
            rest += [k for k, pad in zip(batch["__key__"], batch["__pad__"].tolist()) if not pad]
    whole = _mix(converted)
    assert Counter(seen + rest) == Counter(whole.keys[i] for i in whole._mixture.order(SEED, 3))


def test_a_state_of_another_mixture_or_subset_is_refused(converted):
    state = _mix(converted).state_dict()
    other = StreamingDataset(
        [Source(converted, "train", weight=1), Source(converted, "test", weight=1)],
        fields=("label",),
        seed=SEED,
        epoch_size=20,
    )
    with pytest.raises(UsageError, match="another dataset or order.*mixture"):
        other.load_state_dict(state)
    with pytest.raises(UsageError, match="another dataset or order"):
        StreamingDataset(converted, fields=("label",), seed=SEED).load_state_dict(state)
    subset = StreamingDataset(converted, fields=("label",), seed=SEED, patients=2).state_dict()
    with pytest.raises(UsageError, match="keys_sha256"):
        StreamingDataset(converted, fields=("label",), seed=SEED).load_state_dict(subset)


def test_a_local_and_a_remote_output_are_read_through_one_index(converted, serve):
    """The same output twice, from its directory and over HTTP: each shard read from its own store."""
    other = serve(converted).url
    sources = [Source(converted, "test"), Source(other, "test"), Source(converted, "train", patients=1)]
    ds = StreamingDataset(sources, fields=("label",), seed=SEED, batch_size=6)
    assert ds.root == (str(converted), other, str(converted))
    stock = {**stock_samples(converted, "test"), **stock_samples(converted, "train")}
    batches = list(ds)
    keys = flat_keys(batches)
    assert Counter(keys) == Counter({f"p81_aug00{a}": 2 for a in (1, 2, 3)} | {f"p01_aug00{a}": 1 for a in range(1, 7)})
    for batch in batches:  # the stores' reads of a batch interleave; each view goes back to its sample
        for key, label in zip(batch["__key__"], batch["label"]):
            assert_bit_exact(label.numpy(), stock[key]["label"], key)
    store = ds._reader()._open_store()
    assert store.name(0).startswith(str(converted)) and store.name(2).startswith(other)


# --------------------------------------------------------------------------- subsets, on both readers


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"patients": 2}, [f"p02_aug{a:03d}" for a in range(1, 7)]),
        ({"patients": [1], "keys": ["p01_aug004", "p01_aug002", "p02_aug001"]}, ["p01_aug002", "p01_aug004"]),
        ({"where": lambda r: r.aug % 3 == 0 and r.patient == 1}, ["p01_aug003", "p01_aug006"]),
    ],
)
def test_subsets_keep_the_same_samples_on_both_readers(converted, options, expected):
    stream = StreamingDataset(converted, fields=("label",), shuffle=False, **options)
    assert stream.keys == expected and [s["__key__"] for s in stream] == expected and stream.samples == len(expected)
    zarr = ZarrDataset(converted, "train", ("label",), **options)
    assert list(zarr.keys) == expected and len(zarr) == len(expected)
    assert [zarr[i]["__key__"] for i in range(len(zarr))] == expected
    assert zarr.index_of(key=expected[-1]) == len(expected) - 1
    stock = stock_samples(converted, "train")
    assert_bit_exact(zarr[-1]["label"].numpy(), stock[expected[-1]]["label"], expected[-1])
    with pytest.raises(SampleKeyError):
        zarr.index_of(key="p01_aug001" if "p01_aug001" not in expected else "p02_aug006")


def test_the_predicate_sees_what_the_manifest_says(converted):
    seen: list[SampleRecord] = []
    StreamingDataset(converted, "test", fields=("label",), where=lambda r: seen.append(r) or True)
    entry = manifest_json(converted)["splits"]["test"]
    assert [r.key for r in seen] == entry["keys"] and {r.split for r in seen} == {"test"}
    assert [(r.index, r.patient, r.aug, r.row) for r in seen] == [(i, 81, i + 1, i) for i in range(3)]
    assert all(r.member.endswith(".pt") and r.archive.endswith(".zip") and r.shard >= 0 for r in seen)


def test_subset_and_source_misuse(converted, tmp_path):
    with pytest.raises(NotFoundError, match=r"no sample\(s\) \['p09_aug001'\]"):
        StreamingDataset(converted, keys=["p01_aug001", "p09_aug001"])
    with pytest.raises(NotFoundError, match=r"no patient\(s\) \[7\] \(has \[1, 2\]\)"):
        ZarrDataset(converted, "train", patients=[1, 7])
    with pytest.raises(UsageError, match="keeps no sample"):
        ZarrDataset(converted, "train", where=lambda r: False)
    with pytest.raises(UsageError, match="takes an int or ints"):
        StreamingDataset(converted, patients="1")
    with pytest.raises(UsageError, match="split='test' is for one output"):
        StreamingDataset([Source(converted)], "test")
    with pytest.raises(UsageError, match="give each Source its subset"):
        StreamingDataset([Source(converted)], patients=1)
    with pytest.raises(UsageError, match="sequence of pipeline.Source"):
        StreamingDataset([str(converted)])
    with pytest.raises(UsageError, match="weight must be a positive number"):
        StreamingDataset([Source(converted, weight=-1)])
    changed = tmp_path / "changed"
    changed.mkdir()
    data = manifest_json(converted)
    data["schema"]["label"]["shape"] = [1, 256, 256]
    write_manifest_json(changed, data)
    with pytest.raises(UsageError, match=r"hold \['label'\] in other shapes or dtypes"):
        StreamingDataset([Source(converted), Source(changed)], fields=("label",))


# --------------------------------------------------------------------------- upsampled samples under a transform


def test_each_appearance_of_an_upsampled_sample_is_numbered():
    mixture = Mixture.of([12, 3], [3, 1], 20)  # 15 and 5 positions: 12 + 3 again, 3 + 2 again
    for epoch in (0, 1):
        rows, seen = mixture.order(SEED, epoch), mixture.draws(SEED, epoch)
        for row in range(15):
            assert sorted(seen[rows == row].tolist()) == list(range(int((rows == row).sum()))), row
    assert not Mixture.of([12], [1], None).draws(SEED, 0).any(), "a plain order: every sample's first appearance"


def draw_tag(sample, rng):
    """A transform whose whole output is a draw of its generator."""
    return {"tag": np.array(rng.integers(0, 2**62))}


def test_an_upsampled_sample_is_augmented_anew_at_each_appearance(converted):
    ds = StreamingDataset(Source(converted, "train"), fields=("label",), seed=SEED, epoch_size=24, transform=draw_tag)
    tags: dict[str, list[int]] = {}
    for item in ds:
        tags.setdefault(item["__key__"], []).append(int(item["tag"]))
    assert len(tags) == 12
    for key, drawn in tags.items():
        assert sorted(drawn) == sorted(sample_rng(SEED, 0, key, k).integers(0, 2**62) for k in (0, 1)), key
