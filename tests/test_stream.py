"""StreamingDataset: partition, shuffle, epochs, resumption, storage back ends, damage, and real DDP.

Most properties are checked in-process, on the pure order/partition functions and on datasets given
explicit ranks; the multi-process tests (marked ``slow``) run real ``torch.distributed`` (gloo on
127.0.0.1) in three launches whose results several tests share.
"""

from __future__ import annotations

import gc
import glob
import http.server
import json
import os
import queue
import re
import socket
import subprocess
import sys
import textwrap
import threading
import urllib.parse
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset
from torch.utils.data import DataLoader

from pipeline import OutputError, decode_wds_sample
from pipeline.read.stream import StreamingDataset
from pipeline.read.stream.order import (
    consumed_position,
    epoch_order,
    rank_positions,
    rank_samples,
    rank_share,
    source_neighbour_ratio,
    worker_batches,
)
from pipeline.store.manifest import read_manifest

from conftest import assert_bit_exact, copy_output

SEED = 7


def expected_keys(keys, epoch, rank, world, start=0, batch_size=None, drop_last=False, shuffle=True):
    return [keys[i] for i in rank_samples(len(keys), SEED, epoch, rank, world, start, batch_size, drop_last, shuffle)]


def flat_keys(batches):
    keys = []
    for batch in batches:
        k = batch["__key__"]
        keys.extend([k] if isinstance(k, str) else k)
    return keys


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


# --------------------------------------------------------------------------- reading a real output


def _stock(out: Path, split: str) -> dict[str, dict]:
    urls = sorted(glob.glob(str(out / "wds" / f"{split}-*.tar")))
    return {s["__key__"]: decode_wds_sample(s) for s in webdataset.WebDataset(urls, shardshuffle=False)}


def _assert_same_as_stock(samples, stock, fields):
    keys = []
    for sample in samples:
        key = sample["__key__"]
        keys.append(key)
        assert set(sample) == {"__key__", *fields}
        for field in fields:
            assert isinstance(sample[field], torch.Tensor)
            assert_bit_exact(sample[field].numpy(), stock[key][field], f"{key}.{field}")
    return keys


def test_samples_are_bit_exact_and_in_manifest_order_without_shuffle(converted):
    stock = _stock(converted, "train")
    ds = StreamingDataset(converted, fields=None, shuffle=False)
    keys = _assert_same_as_stock(ds, stock, ds.fields)
    assert keys == read_manifest(converted)["splits"]["train"]["keys"] == ds.keys
    assert len(ds) == len(keys) == 12


def test_only_requested_fields_are_read(converted, monkeypatch):
    from pipeline.store import location as storage

    ds = StreamingDataset(converted, fields=("label",), seed=SEED)
    lengths = []
    original = storage.LocalRangeReader.read

    def counting_read(self, shard, offset, length, into=None):
        lengths.append(length)
        return original(self, shard, offset, length, into)

    monkeypatch.setattr(storage.LocalRangeReader, "read", counting_read)
    samples = list(ds)
    assert [s["__key__"] for s in samples] == expected_keys(ds.keys, 0, 0, 1)
    assert all(s["label"].dtype == torch.int64 and s["label"].shape == (1, 512, 512) for s in samples)
    shards = read_manifest(converted)["splits"]["train"]["shards"]
    label = list(read_manifest(converted)["schema"]).index("label")
    assert sum(lengths) == sum(p[2 * label + 1] for s in shards for p in s["payloads"])


def test_batches_do_not_depend_on_workers_and_come_in_shared_memory(converted):
    ds = StreamingDataset(converted, fields=("img", "label"), seed=SEED, batch_size=5)
    ds.set_epoch(3)
    runs = {w: list(DataLoader(ds, batch_size=None, num_workers=w)) for w in (0, 2)}
    for w, batches in runs.items():
        assert [len(b["__key__"]) for b in batches] == [5, 5, 2]
        assert flat_keys(batches) == expected_keys(ds.keys, 3, 0, 1), w
    assert all(type(b) is dict for b in runs[2]), "shared-memory batches arrive as plain dicts"
    for a, b in zip(*runs.values()):
        assert torch.equal(a["img"], b["img"]) and torch.equal(a["label"], b["label"])
    # per-sample mode, collated by the DataLoader
    samples = StreamingDataset(converted, fields=("img",), seed=SEED)
    samples.set_epoch(3)
    batches = list(DataLoader(samples, batch_size=4))
    assert flat_keys(batches) == expected_keys(ds.keys, 3, 0, 1)
    assert batches[0]["img"].shape == (4, 512, 512)


def test_persistent_workers_follow_epochs_and_never_overwrite_held_batches(converted):
    """Slots are reused only once the main process has dropped every tensor of their batch."""
    stock = _stock(converted, "train")
    ds = StreamingDataset(converted, fields=("img", "label"), seed=SEED, batch_size=2)
    loader = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True)
    held = []
    for epoch in range(4):
        ds.set_epoch(epoch)
        batches = list(ds.track(loader))
        assert flat_keys(batches) == expected_keys(ds.keys, epoch, 0, 1), "persistent workers follow set_epoch"
        if epoch == 0:  # hold a view of some batches, whole tensors of others; drop the rest
            held = [("img", b["img"][1:], b["__key__"][1:]) for b in batches[::2]]
            held += [("label", b["label"], b["__key__"]) for b in batches[1::2]]
        del batches
    for field, tensor, keys in held:
        for row, key in enumerate(keys):
            assert_bit_exact(tensor[row].numpy(), stock[key][field], f"held {key}.{field}")


def test_in_process_batches_reuse_memory_but_never_overwrite_held_batches(converted):
    stock = _stock(converted, "train")
    ds = StreamingDataset(converted, fields=("img", "label"), seed=SEED, batch_size=2)
    addresses = set()
    for epoch in range(3):  # batches dropped at once: decoded one ahead into a few reused slots
        ds.set_epoch(epoch)
        for batch in ds:
            addresses.add(batch["img"].data_ptr())
            del batch
    assert len(addresses) <= 3, "dropped batches' memory is reused"
    held = []
    for epoch in range(3, 6):
        ds.set_epoch(epoch)
        for i, batch in enumerate(ds):
            if epoch == 3 and i % 2 == 0:
                held.append(("img", batch["img"][1:], batch["__key__"][1:]))  # a view keeps the slot
            elif epoch == 3:
                held.append(("label", batch["label"], batch["__key__"]))
            del batch
    for field, tensor, keys in held:
        for row, key in enumerate(keys):
            assert_bit_exact(tensor[row].numpy(), stock[key][field], f"held {key}.{field}")


def test_a_slot_is_free_only_when_no_tensor_or_view_is_left():
    from pipeline.read.batches import BatchLayout, SlotPool
    from pipeline.read.slot_registry import rebuild_shared_batch

    pool = SlotPool(BatchLayout.of({"a": ((3,), np.dtype("<f4")), "b": ((2, 2), np.dtype("|b1"))}, 4))
    slot = pool.take()
    arrays = pool.layout.arrays(slot.bytes, 3)
    arrays["a"][:] = np.arange(9).reshape(3, 3)
    arrays["b"][:] = True
    other_process = (-1, 0)  # a slot id from "another process"; not kept mapped here (kept=False)
    batch = rebuild_shared_batch(other_process, slot.storage, False, pool.layout, 3, ["x", "y", "z"])
    assert batch["a"].shape == (3, 3) and batch["b"].dtype == torch.bool and batch["b"].all()
    assert batch["a"][2].tolist() == [6, 7, 8]
    view = batch["a"][1:].t()
    del batch
    assert pool.take() is not slot, "a view of the batch is still alive"
    del view
    assert pool.take() is slot, "free again once nothing refers to it"


def test_the_main_process_keeps_worker_slots_mapped_while_the_workers_live(converted, monkeypatch):
    """Each slot's memory crosses once; later batches name the slot; exited workers' slots are dropped."""
    from pipeline.read import slot_registry

    registered = []
    keep = slot_registry._keep_mapped
    monkeypatch.setattr(slot_registry, "_keep_mapped", lambda *args: registered.append(args[0]) or keep(*args))
    stock = _stock(converted, "train")
    ds = StreamingDataset(converted, fields=("img", "label"), seed=SEED, batch_size=2)
    loader = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True)
    for epoch in range(3):
        ds.set_epoch(epoch)
        for batch in loader:
            for row, key in enumerate(batch["__key__"]):
                assert_bit_exact(batch["label"][row].numpy(), stock[key]["label"], f"epoch {epoch} {key}")
    workers = {pid for pid, _ in registered}
    assert len(workers) == 2 and len(registered) == len(set(registered)), "each slot registered once"
    assert len(registered) < 3 * ds.num_batches, "later epochs reuse registered slots"
    assert set(registered) <= set(slot_registry._MAPPED_SLOTS)
    watchers = [slot_registry._WATCHERS[pid] for pid in workers]  # Linux: one per worker, on its pidfd
    del loader, batch  # shuts the persistent workers down (joined)
    gc.collect()
    for watcher in watchers:
        watcher.join(timeout=60)
    assert not workers & {pid for pid, _ in slot_registry._MAPPED_SLOTS}, "exited workers' slots dropped"


def test_without_pidfds_exited_workers_slots_are_dropped_at_the_next_registration(converted, monkeypatch):
    from pipeline.read import slot_registry

    def no_pidfds(pid):
        raise OSError("no pidfds here")

    monkeypatch.setattr(slot_registry.os, "pidfd_open", no_pidfds)

    def registered_pids() -> set[int]:
        return {pid for pid, _ in slot_registry._MAPPED_SLOTS}

    before = registered_pids()
    ds = StreamingDataset(converted, fields=("shape",), seed=SEED, batch_size=2)
    assert len(list(DataLoader(ds, batch_size=None, num_workers=1))) == ds.num_batches  # its worker exits
    first = registered_pids() - before
    assert first, "the first loader's worker registered its slots"
    assert len(list(DataLoader(ds, batch_size=None, num_workers=1))) == ds.num_batches
    assert not first & registered_pids(), "dropped when the second loader's worker registered"


def test_a_batch_naming_a_slot_this_process_does_not_have_is_an_error():
    from pipeline.read.batches import BatchLayout
    from pipeline.read.slot_registry import rebuild_shared_batch

    layout = BatchLayout.of({"a": ((3,), np.dtype("<f4"))}, 2)
    with pytest.raises(RuntimeError, match="does not have that slot mapped"):
        rebuild_shared_batch((-1, 12345), None, True, layout, 2, ["x", "y"])


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_in_process_on_another_world_size(converted, workers):
    """Ranks simulated in one process: 2 ranks × 3 per batch stop after a step; 3 ranks × 2 finish."""
    keys = StreamingDataset(converted, fields=("label",)).keys
    first = [
        StreamingDataset(converted, fields=("label",), seed=SEED, batch_size=3, rank=r, world_size=2) for r in range(2)
    ]
    seen, states = [], []
    for ds in first:
        ds.set_epoch(1)
        for batch in ds.track(DataLoader(ds, batch_size=None, num_workers=workers)):
            seen += batch["__key__"]
            break
        states.append(ds.state_dict())
    assert states[0] == states[1] and states[0]["epoch"] == 1 and states[0]["position"] == 6
    second = [
        StreamingDataset(converted, fields=("label",), seed=SEED, batch_size=2, rank=r, world_size=3) for r in range(3)
    ]
    rest = []
    for r, ds in enumerate(second):
        ds.load_state_dict(json.loads(json.dumps(states[0])))
        ds.set_epoch(1)  # the loaded epoch: keeps the position
        assert len(ds) == 2
        got = flat_keys(ds.track(DataLoader(ds, batch_size=None, num_workers=workers)))
        assert got == expected_keys(keys, 1, r, 3, start=6)
        rest += got
        assert ds.state_dict() == {**states[0], "epoch": 2, "position": 0, "world_size": 3}
    assert sorted(seen + rest) == sorted(keys), "no repeats, no gaps"


def test_state_dict_without_track_and_its_checks(converted):
    ds = StreamingDataset(converted, fields=("label",), seed=SEED, rank=0, world_size=2)
    ds.set_epoch(4)
    assert ds.state_dict(samples_seen=2)["position"] == 4
    assert ds.state_dict(samples_seen=6) == {**ds.state_dict(samples_seen=6), "epoch": 5, "position": 0}
    other = StreamingDataset(converted, fields=("label",), seed=SEED + 1)
    with pytest.raises(ValueError, match="seed"):
        other.load_state_dict(ds.state_dict(samples_seen=2))
    with pytest.raises(ValueError, match="another dataset"):
        StreamingDataset(converted, split="test", seed=SEED).load_state_dict(ds.state_dict(samples_seen=2))
    # per-sample mode with workers batching their own samples cannot give a prefix
    samples = StreamingDataset(converted, fields=("shape",), seed=SEED)
    for _ in samples.track(DataLoader(samples, batch_size=2, num_workers=2)):
        break
    with pytest.raises(ValueError, match="batch_size"):
        samples.state_dict()


def test_bad_arguments():
    with pytest.raises(OutputError, match="no manifest"):
        StreamingDataset("/nonexistent/output")


def test_bad_fields_and_sizes(converted):
    with pytest.raises(ValueError, match="unknown field"):
        StreamingDataset(converted, fields=("img", "nope"))
    with pytest.raises(ValueError, match="batch_size"):
        StreamingDataset(converted, batch_size=0)
    with pytest.raises(ValueError, match="already batches"):
        ds = StreamingDataset(converted, batch_size=2)
        next(ds.track(DataLoader(ds, batch_size=2)))


# --------------------------------------------------------------------------- URLs


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves files under ``server.root`` with single-range ``Range`` support and keep-alive."""

    protocol_version = "HTTP/1.1"
    ranges = True

    def do_GET(self):
        path = Path(self.server.root) / urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        size = path.stat().st_size
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "")) if self.ranges else None
        start, end = (0, size - 1) if match is None else (int(match[1]), min(int(match[2] or size - 1), size - 1))
        if start >= size:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        with open(path, "rb") as file:
            file.seek(start)
            body = file.read(end - start + 1)
        self.send_response(200 if match is None else 206)
        if match is not None:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except ConnectionError:  # the client hung up (it does on purpose after an unwanted 200)
            self.close_connection = True

    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # clients hang up on purpose in these tests
            super().handle_error(request, client_address)


@pytest.fixture
def serve():
    servers = []

    def start(root: Path, handler: type = _RangeHandler) -> str:
        server = _Server(("127.0.0.1", 0), handler)
        server.root = str(root)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("scheme", ["http", "file"])
def test_urls_read_the_same_samples(converted, serve, scheme):
    url = serve(converted) if scheme == "http" else converted.as_uri()
    stock = _stock(converted, "train")
    ds = StreamingDataset(url, fields=None, seed=SEED, batch_size=4)
    batches = list(DataLoader(ds, batch_size=None, num_workers=2 if scheme == "http" else 0))
    assert flat_keys(batches) == expected_keys(ds.keys, 0, 0, 1)
    for batch in batches:
        for row, key in enumerate(batch["__key__"]):
            for field in ds.fields:
                assert_bit_exact(batch[field][row].numpy(), stock[key][field], f"{scheme} {key}.{field}")


def test_a_server_without_range_requests_is_an_error(converted, serve):
    url = serve(converted, type("NoRanges", (_RangeHandler,), {"ranges": False}))
    with pytest.raises(OutputError, match="Range"):
        next(iter(StreamingDataset(url)))


def test_many_shards_with_few_open_files(converted, monkeypatch):
    from pipeline.store import location as storage

    monkeypatch.setattr(storage.LocalRangeReader, "max_open", 2)
    stock = _stock(converted, "train")
    ds = StreamingDataset(converted, fields=("label", "shape"), seed=SEED)
    assert len(read_manifest(converted)["splits"]["train"]["shards"]) > 2
    assert _assert_same_as_stock(ds, stock, ds.fields) == expected_keys(ds.keys, 0, 0, 1)


def _damage(out: Path, how: str) -> str:
    """Damage the second shard of ``train``; return its file name."""
    shard = read_manifest(out)["splits"]["train"]["shards"][1]
    path = out / shard["file"]
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        os.truncate(path, shard["bytes"] - 1000)
    else:  # flip bytes in the middle of a sample's first payload (img), keeping the size
        offset, size = shard["payloads"][0][0:2]
        with open(path, "r+b") as file:
            file.seek(offset + size // 2)
            chunk = file.read(64)
            file.seek(offset + size // 2)
            file.write(bytes(b ^ 0x5A for b in chunk))
    return shard["file"]


@pytest.mark.parametrize("how", ["missing", "truncated", "corrupt"])
@pytest.mark.parametrize("scheme", ["local", "http", "file"])
def test_damaged_shard_is_an_error_naming_it(converted, tmp_path, serve, how, scheme):
    out = copy_output(converted, tmp_path)
    name = _damage(out, how)
    root = {"local": out, "http": serve(out) if scheme == "http" else None, "file": out.as_uri()}[scheme]
    batch = 2 if scheme == "local" else None  # local: batches decode one ahead, on two decode threads
    ds = StreamingDataset(root, fields=("img",), shuffle=False, batch_size=batch, decode_threads=2)
    received = []
    with pytest.raises(OutputError, match=re.escape(name)) as error:
        for item in ds:
            received += item["__key__"] if batch else [item["__key__"]]
    assert re.search(
        {"missing": "missing", "truncated": "truncated", "corrupt": "corrupt|damaged"}[how], str(error.value)
    )
    # every batch before the damaged one arrives first, also when the damaged one was read ahead
    before = len(read_manifest(out)["splits"]["train"]["shards"][0]["keys"])
    assert before >= (batch or 1), "the first shard fills a batch, so an early error would show"
    assert received == ds.keys[: len(received)] and len(received) == before - before % (batch or 1)


# --------------------------------------------------------------------------- real torch.distributed

RANK_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch, torch.distributed as dist
    from torch.utils.data import DataLoader
    from pipeline.read.stream import StreamingDataset

    def main():
        config = json.load(open(sys.argv[1]))
        rank, world = int(sys.argv[2]), int(sys.argv[3])
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{config['port']}", rank=rank, world_size=world)
        results = {}
        for sc in config["scenarios"]:
            ds = StreamingDataset(config["root"], split=sc.get("split", "train"), fields=("label",),
                                  seed=config["seed"], batch_size=sc.get("batch_size"))
            if sc.get("load"):
                ds.load_state_dict(json.load(open(sc["load"])))
            runs = []
            loader = DataLoader(ds, batch_size=sc.get("loader_batch"), num_workers=sc["workers"],
                                multiprocessing_context=sc.get("context"),
                                persistent_workers=sc.get("persistent", False))
            for epoch in sc["epochs"]:
                ds.set_epoch(epoch)
                length, keys, ok = len(ds), [], True
                for step, batch in enumerate(ds.track(loader)):
                    k = batch["__key__"]
                    keys += [k] if isinstance(k, str) else k
                    ok = ok and isinstance(batch["label"], torch.Tensor) and batch["label"].dtype == torch.int64
                    if step + 1 == sc.get("stop"):
                        break
                runs.append({"epoch": epoch, "len": length, "keys": keys, "tensors": ok, "state": ds.state_dict()})
            if sc.get("save") and rank == 0:
                json.dump(ds.state_dict(), open(sc["save"], "w"))
            dist.barrier()  # the next launch reads the state only after every rank has finished
            results[sc["name"]] = {"rank": ds.rank, "world": ds.world_size, "runs": runs}
        json.dump(results, open(f"{config['out']}/rank{rank}.json", "w"))
        dist.destroy_process_group()


    if __name__ == "__main__":  # spawned DataLoader workers import this file as __mp_main__
        main()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(root: Path, folder: Path, world: int, scenarios: list[dict], script: str = RANK_SCRIPT) -> list[dict]:
    """Run ``script`` (by default RANK_SCRIPT) on ``world`` processes; return each rank's results."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rank.py").write_text(script)
    config = {"root": str(root), "seed": SEED, "port": _free_port(), "out": str(folder), "scenarios": scenarios}
    (folder / "config.json").write_text(json.dumps(config))
    inherited = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in inherited}  # ranks come from torch.distributed
    env["GLOO_SOCKET_IFNAME"] = "lo"
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    procs = [
        subprocess.Popen(
            [sys.executable, str(folder / "rank.py"), str(folder / "config.json"), str(r), str(world)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(world)
    ]
    # one thread per rank collects its output; the first failure stops the others (no hang on a dead peer)
    finished: queue.Queue = queue.Queue()
    for r, p in enumerate(procs):
        threading.Thread(target=lambda r=r, p=p: finished.put((r, p.communicate()[0], p.wait())), daemon=True).start()
    failed = []
    try:
        for _ in procs:
            r, output, rc = finished.get(timeout=300)
            if rc:
                failed.append(f"rank {r} exited {rc}:\n{output}")
                break
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert not failed, "\n".join(failed)
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(world)]


@pytest.fixture(scope="module")
def ddp(converted, tmp_path_factory):
    """Three launches: 2 ranks (stop mid-epoch), 3 ranks (elastic resume; stop), 2 ranks (resume both)."""
    base = tmp_path_factory.mktemp("ddp")
    state2, state3 = str(base / "state-w2.json"), str(base / "state-w3.json")
    w2 = _launch(
        converted,
        base / "w2",
        2,
        [
            {"name": "full-0", "workers": 0, "batch_size": 3, "epochs": [0, 1]},
            {"name": "full-2", "workers": 2, "batch_size": 3, "epochs": [0, 1], "persistent": True},
            {"name": "spawned-workers", "workers": 1, "context": "spawn", "batch_size": 3, "epochs": [0]},
            {"name": "per-sample", "workers": 0, "loader_batch": 2, "epochs": [0]},
            {"name": "padded", "split": "test", "workers": 2, "batch_size": 1, "epochs": [0]},
            {"name": "stop", "workers": 2, "batch_size": 3, "epochs": [2], "stop": 1, "save": state2},
        ],
    )
    w3 = _launch(
        converted,
        base / "w3",
        3,
        [
            {"name": "full-0", "workers": 0, "batch_size": 2, "epochs": [0, 1]},
            {"name": "full-2", "workers": 2, "batch_size": 2, "epochs": [0, 1]},
            {"name": "elastic", "workers": 2, "batch_size": 2, "epochs": [2], "load": state2},
            {"name": "stop", "workers": 0, "batch_size": 2, "epochs": [5], "stop": 1, "save": state3},
        ],
    )
    w2b = _launch(
        converted,
        base / "w2-again",
        2,
        [
            {"name": "resume", "workers": 2, "batch_size": 3, "epochs": [2], "load": state2},
            {"name": "elastic", "workers": 0, "batch_size": 3, "epochs": [5, 6], "load": state3},
        ],
    )
    return {"keys": read_manifest(converted)["splits"], 2: w2, 3: w3, "2b": w2b}


def _runs(results, name):
    """Per epoch, per rank: the run records of scenario ``name``."""
    per_rank = [r[name]["runs"] for r in results]
    return [list(epoch) for epoch in zip(*per_rank)]


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_ddp_coverage_equal_lengths_determinism_and_workers(ddp, world):
    keys = ddp["keys"]["train"]["keys"]
    for name in ("full-0", "full-2"):
        assert [r[name]["rank"] for r in ddp[world]] == list(range(world)), "ranks from torch.distributed"
        assert {r[name]["world"] for r in ddp[world]} == {world}
        epochs = _runs(ddp[world], name)
        for e, ranks in enumerate(epochs):
            assert all(run["tensors"] for run in ranks)
            assert len({len(run["keys"]) for run in ranks}) == 1, "equal lengths"
            assert all(run["len"] == len(run["keys"]) for run in ranks), "len(ds) is what a rank yields"
            assert sorted(k for run in ranks for k in run["keys"]) == sorted(keys), "each sample once"
            for r, run in enumerate(ranks):
                assert run["keys"] == expected_keys(keys, e, r, world), "depends on (seed, epoch, world) only"
        assert [run["keys"] for run in epochs[0]] != [run["keys"] for run in epochs[1]], "new order each epoch"
    assert _runs(ddp[world], "full-0") == _runs(ddp[world], "full-2"), "independent of num_workers"


@pytest.mark.slow
def test_ddp_spawned_workers_per_sample_mode_and_padding(ddp):
    keys = ddp["keys"]["train"]["keys"]
    spawned = _runs(ddp[2], "spawned-workers")[0]
    assert spawned == _runs(ddp[2], "full-0")[0], "spawned workers get the main process's rank"
    per_sample = _runs(ddp[2], "per-sample")[0]
    assert [run["keys"] for run in per_sample] == [expected_keys(keys, 0, r, 2) for r in range(2)]
    test_keys = ddp["keys"]["test"]["keys"]
    padded = _runs(ddp[2], "padded")[0]
    assert [len(run["keys"]) for run in padded] == [2, 2]
    counts = Counter(k for run in padded for k in run["keys"])
    assert set(counts) == set(test_keys) and sum(counts.values()) == 4
    assert counts[expected_keys(test_keys, 0, 0, 1)[0]] == 2, "padding repeats the epoch's first sample"


@pytest.mark.slow
def test_ddp_resume_same_world_size_in_a_new_process(ddp):
    keys = ddp["keys"]["train"]["keys"]
    before = _runs(ddp[2], "stop")[0]
    assert [len(run["keys"]) for run in before] == [3, 3]
    assert len({json.dumps(run["state"]) for run in before}) == 1, "every rank saves the same state"
    assert before[0]["state"]["epoch"] == 2 and before[0]["state"]["position"] == 6
    after = _runs(ddp["2b"], "resume")[0]
    assert all(run["len"] == 3 for run in after)
    seen = [k for run in before + after for k in run["keys"]]
    assert sorted(seen) == sorted(keys), "no repeats, no gaps"
    for r in range(2):
        assert before[r]["keys"] + after[r]["keys"] == expected_keys(keys, 2, r, 2), "the rest of the same sequence"


@pytest.mark.slow
def test_ddp_elastic_resume_from_2_to_3_ranks_and_back(ddp):
    keys = ddp["keys"]["train"]["keys"]
    before = [k for run in _runs(ddp[2], "stop")[0] for k in run["keys"]]
    after = _runs(ddp[3], "elastic")[0]
    assert [len(run["keys"]) for run in after] == [2, 2, 2]
    assert sorted(before + [k for run in after for k in run["keys"]]) == sorted(keys), "no repeats, no gaps"
    assert all(run["state"]["epoch"] == 3 and run["state"]["position"] == 0 for run in after), "epoch done"
    # 3 ranks × 2 stop after one step of epoch 5; 2 ranks × 3 finish it, then run epoch 6 in full
    before3 = [k for run in _runs(ddp[3], "stop")[0] for k in run["keys"]]
    epoch5, epoch6 = _runs(ddp["2b"], "elastic")
    assert sorted(before3 + [k for run in epoch5 for k in run["keys"]]) == sorted(keys)
    assert [run["keys"] for run in epoch6] == [expected_keys(keys, 6, r, 2) for r in range(2)]
