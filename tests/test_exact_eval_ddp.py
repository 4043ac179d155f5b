"""Exact evaluation under real ``torch.distributed`` (gloo): a per-sample metric summed over ranks,
leaving out the samples marked ``__pad__``, equals the single-process sum, on 2 and 3 ranks of an
11-sample split (a remainder either way, so ranks pad their shares with repeats).

Both readers, with and without DataLoader workers: ``StreamingDataset`` with its own batches and
with single samples batched by the DataLoader; ``ZarrDataset`` under ``pipeline.DistributedSampler``
(torch's, with its repeats marked), batched and single. The metric is an integer (foreground pixels
of ``label``), so sums are exact whatever order the ranks add them in. The reference is computed
here, in one process, from stock ``webdataset``.
"""

from __future__ import annotations

import pickle

import pytest
from torch.utils.data import DistributedSampler as TorchDistributedSampler

from pipeline import DistributedSampler
from pipeline.read.samplers import PaddingIndex

import test_stream_ddp
from stream_common import rank_script, stock_samples

RANK_SCRIPT = rank_script(
    imports="""
    import torch, torch.distributed as dist
    from torch.utils.data import DataLoader
    from pipeline import DistributedSampler, StreamingDataset, ZarrDataset
    """,
    scenario="""
    workers = sc["workers"]
    if sc["reader"] == "stream":
        ds = StreamingDataset(config["root"], fields=("label",), seed=config["seed"],
                              batch_size=sc.get("batch_size"))
        ds.set_epoch(sc["epoch"])
        loader = DataLoader(ds, batch_size=sc.get("loader_batch"), num_workers=workers)
    else:
        ds = ZarrDataset(config["root"], fields=("label",))
        sampler = DistributedSampler(ds, shuffle=sc["shuffle"], seed=config["seed"])
        sampler.set_epoch(sc["epoch"])
        loader = DataLoader(ds, batch_size=sc.get("loader_batch"), sampler=sampler, num_workers=workers)
    # the README's exact metric: a per-sample value, summed without the padding, then over ranks
    totals = torch.zeros(4, dtype=torch.int64)  # exact sum, exact count, naive sum, naive count
    keys = []
    for batch in loader:
        label, pad = batch["label"], torch.as_tensor(batch["__pad__"])
        if label.ndim == 3:  # a single sample
            label, pad, batch_keys = label[None], pad[None], [batch["__key__"]]
        else:
            batch_keys = batch["__key__"]
        assert pad.dtype == torch.bool and pad.shape == (len(batch_keys),)
        metric = (label > 0).flatten(1).sum(1)  # per sample: foreground pixels
        keep = ~pad
        totals += torch.stack([metric[keep].sum(), keep.sum(), metric.sum(), torch.tensor(len(metric))])
        keys += [[k, bool(p)] for k, p in zip(batch_keys, pad.tolist())]
    dist.all_reduce(totals)
    results[sc["name"]] = {"totals": totals.tolist(), "keys": keys}
    """,
)

SCENARIOS = [
    {"name": "stream-batches", "reader": "stream", "batch_size": 3, "workers": 0, "epoch": 0},
    {"name": "stream-batches-workers", "reader": "stream", "batch_size": 3, "workers": 2, "epoch": 1},
    {"name": "stream-samples", "reader": "stream", "loader_batch": 2, "workers": 0, "epoch": 2},
    {"name": "zarr-batches", "reader": "zarr", "loader_batch": 3, "workers": 0, "shuffle": False, "epoch": 0},
    {"name": "zarr-batches-workers", "reader": "zarr", "loader_batch": 3, "workers": 2, "shuffle": True, "epoch": 1},
    {"name": "zarr-samples", "reader": "zarr", "workers": 0, "shuffle": True, "epoch": 2},
]


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_metric_summed_over_ranks_without_padding_equals_the_single_process_sum(eleven, tmp_path, world):
    stock = stock_samples(eleven, "train")
    assert len(stock) == 11
    reference = sum(int((s["label"] > 0).sum()) for s in stock.values())
    results = test_stream_ddp._launch(eleven, tmp_path / f"w{world}", world, SCENARIOS, script=RANK_SCRIPT)
    padded = -(-11 // world) * world  # every rank yields ceil(11 / world)
    for scenario in SCENARIOS:
        name = scenario["name"]
        totals = [r[name]["totals"] for r in results]
        assert len({tuple(t) for t in totals}) == 1, f"{name}: all_reduce gives every rank the same sums"
        exact, count, naive, naive_count = totals[0]
        assert (exact, count) == (reference, 11), f"{name}: each sample counted once"
        assert naive_count == padded and naive > reference, f"{name}: the padding repeats samples"
        real = sorted(k for r in results for k, pad in r[name]["keys"] if not pad)
        assert real == sorted(stock), f"{name}: the unpadded samples are the split, once each"


@pytest.mark.parametrize("n, world", [(11, 2), (11, 3), (3, 2), (2, 3), (12, 3)])
@pytest.mark.parametrize("shuffle, drop_last", [(False, False), (True, False), (True, True)])
def test_distributed_sampler_is_torchs_with_its_repeats_marked(n, world, shuffle, drop_last):
    padding = 0 if drop_last else -(-n // world) * world - n
    marked = []
    for rank in range(world):
        arguments = {"num_replicas": world, "rank": rank, "shuffle": shuffle, "seed": 3, "drop_last": drop_last}
        ours, torchs = DistributedSampler(range(n), **arguments), TorchDistributedSampler(range(n), **arguments)
        ours.set_epoch(2), torchs.set_epoch(2)
        indices = list(ours)
        assert indices == list(torchs), "the same indices in the same order"
        marked += [i for i in indices if isinstance(i, PaddingIndex)]
        unmarked = [i for i in indices if not isinstance(i, PaddingIndex)]
        assert all(type(i) is int for i in unmarked)
    assert len(marked) == padding
    again = pickle.loads(pickle.dumps(marked))  # as indices travel to DataLoader workers
    assert again == marked and all(isinstance(i, PaddingIndex) for i in again)
