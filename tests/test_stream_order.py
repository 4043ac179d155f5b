"""StreamingDataset's order, partition, padding and resumption arithmetic: pure functions, no data."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from pipeline.read.stream.order import (
    consumed_position,
    epoch_order,
    rank_positions,
    rank_samples,
    rank_share,
    source_neighbour_ratio,
    worker_batches,
)

from stream_common import SEED

# --------------------------------------------------------------------------- pure logic


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("batch_size", [None, 1, 4])
@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_partition_is_disjoint_equal_and_minimally_padded(world, batch_size, drop_last):
    for samples in (1, 2, 7, 12, 101):
        for start in sorted({0, 1, samples // 3, samples - 1}):
            ranks = [rank_positions(samples, start, r, world, batch_size, drop_last) for r in range(world)]
            share = rank_share(samples - start, world, batch_size, drop_last)
            assert all(len(p) == share for p in ranks), "every rank yields the same number of samples"
            positions = np.sort(np.concatenate(ranks))
            assert positions.tolist() == list(range(start, start + world * share)), "a window of the order"
            remaining = samples - start
            if drop_last:
                step = world * (batch_size or 1)
                assert 0 <= remaining - world * share < step, "drops less than one global step"
            else:
                assert 0 <= world * share - remaining < world, "pads less than one sample per rank"
                # padding wraps around to the start of the epoch's order
                padding = [p % samples for p in positions if p >= samples]
                assert padding == [i % samples for i in range(world * share - remaining)]


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_workers_reproduce_the_rank_sequence_in_dataloader_order(batch_size):
    for share in range(0, 20):
        for workers in (1, 2, 3, 4):
            per_worker = [iter(worker_batches(share, batch_size, w, workers)) for w in range(workers)]
            # the DataLoader asks the workers in turn, skipping exhausted ones, and keeps that order
            active, got, turn = set(range(workers)), [], 0
            while active:
                w = turn % workers
                turn += 1
                if w in active:
                    batch = next(per_worker[w], None)
                    if batch is None:
                        active.discard(w)
                    else:
                        got.extend(batch)
            assert got == list(range(share)), (share, workers)


def test_order_depends_on_seed_and_epoch_only():
    a, b = epoch_order(1000, 3, 0), epoch_order(1000, 3, 0)
    assert np.array_equal(a, b)
    assert sorted(a.tolist()) == list(range(1000))
    assert not np.array_equal(a, epoch_order(1000, 3, 1)), "a new order each epoch"
    assert not np.array_equal(a, epoch_order(1000, 4, 0))
    assert epoch_order(5, 3, 0, shuffle=False).tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("samples", "first", "second"), [(101, (2, 3), (3, 2)), (101, (3, 2), (2, 3)), (12, (2, 3), (3, 2))]
)
def test_elastic_resume_arithmetic(samples, first, second):
    """Stop after k global steps on W ranks, resume on W' ranks with the same global batch."""
    (w1, b1), (w2, b2) = first, second
    for steps in range(0, samples // (w1 * b1) + 1):
        seen = []
        for r in range(w1):
            seen += rank_positions(samples, 0, r, w1, b1)[: steps * b1].tolist()
        position = consumed_position(0, steps * b1, w1, samples)
        assert sorted(seen) == list(range(position)), "what was seen is a prefix of the order"
        rest = [p for r in range(w2) for p in rank_positions(samples, position, r, w2, b2).tolist()]
        counts = Counter(p % samples for p in seen + rest)
        assert set(counts) == set(range(samples))
        assert sum(counts.values()) - samples < w2, "only the minimal padding repeats"


def _buffer_shuffle(sequence, buffer, rng):
    """What shard order plus a shuffle buffer gives (webdataset.shuffle): the baseline to beat."""
    pool, out = [], []
    for x in sequence:
        pool.append(x)
        if len(pool) >= buffer:
            out.append(pool.pop(rng.integers(len(pool))))
    while pool:
        out.append(pool.pop(rng.integers(len(pool))))
    return out


def test_shuffle_breaks_source_neighbourhoods():
    """10,000 keys: 100 patients × 100 shapes, in shards of 100 consecutive samples.

    Figure: :func:`source_neighbour_ratio` — pairs of source neighbours (same patient, adjacent
    shape numbers) at most 16 samples apart in what a rank yields, relative to a uniformly random
    order (1 = ideal); the mean over 20 epochs, and single epochs of the global order and of a rank.
    """
    patients, shapes = 100, 100
    patient = np.repeat(np.arange(patients), shapes)
    aug = np.tile(np.arange(1, shapes + 1), patients)
    n = len(patient)
    rng = np.random.default_rng(0)
    source = np.arange(n)
    shards = source.reshape(-1, 100)[rng.permutation(n // 100)].reshape(-1)
    figures = {
        "source order": source_neighbour_ratio(source, patient, aug),
        "shuffled shards + 1000-sample buffer": source_neighbour_ratio(
            _buffer_shuffle(shards, 1000, rng), patient, aug
        ),
        "global order, epoch 0": source_neighbour_ratio(epoch_order(n, SEED, 0), patient, aug),
        "rank 1 of 3, epoch 0": source_neighbour_ratio(rank_samples(n, SEED, 0, 1, 3), patient, aug),
        "global order, mean of 20 epochs": float(
            np.mean([source_neighbour_ratio(epoch_order(n, SEED, e), patient, aug) for e in range(20)])
        ),
    }
    print("\nshuffle quality (source-neighbour ratio, 1 = uniform):", json.dumps(figures, indent=1))
    assert figures["source order"] > 100
    assert figures["shuffled shards + 1000-sample buffer"] > 5
    assert 0.6 < figures["global order, epoch 0"] < 1.4 and 0.6 < figures["rank 1 of 3, epoch 0"] < 1.4
    assert 0.9 < figures["global order, mean of 20 epochs"] < 1.1
