"""StreamingDataset on a real output in one process: samples, fields, reused batch memory, slots, resumption."""

from __future__ import annotations

import gc
import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pipeline import OutputError
from pipeline.errors import NotFoundError, UsageError
from pipeline.read.stream import StreamingDataset
from pipeline.store.manifest import read_manifest

from conftest import assert_bit_exact, copy_output
from stream_common import SEED, assert_same_as_stock, expected_keys, flat_keys, stock_samples
from tamper import replace_tar_member

# --------------------------------------------------------------------------- reading a real output


def test_samples_are_bit_exact_and_in_manifest_order_without_shuffle(converted):
    stock = stock_samples(converted, "train")
    ds = StreamingDataset(converted, fields=None, shuffle=False)
    keys = assert_same_as_stock(ds, stock, ds.fields)
    assert keys == read_manifest(converted).splits["train"].keys == ds.keys
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
    shards = read_manifest(converted).splits["train"].shards
    label = list(read_manifest(converted).schema).index("label")
    assert sum(lengths) == sum(p[2 * label + 1] for s in shards for p in s.payloads)


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
    stock = stock_samples(converted, "train")
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
    stock = stock_samples(converted, "train")
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
    from pipeline.read.batch_memory.memory import BatchLayout
    from pipeline.read.batch_memory.pool import SlotPool
    from pipeline.read.batch_memory.registry import rebuild_shared_batch

    pool = SlotPool(BatchLayout.of({"a": ((3,), np.dtype("<f4")), "b": ((2, 2), np.dtype("|b1"))}, 4))
    slot = pool.take()
    arrays = pool.layout.arrays(slot.bytes, 3)
    arrays["a"][:] = np.arange(9).reshape(3, 3)
    arrays["b"][:] = True
    other_process = (-1, 0)  # a slot id from "another process"; not kept mapped here (kept=False)
    batch = rebuild_shared_batch(other_process, slot.storage, False, pool.layout, 3, ["x", "y", "z"], [False] * 3)
    assert batch["a"].shape == (3, 3) and batch["b"].dtype == torch.bool and batch["b"].all()
    assert batch["a"][2].tolist() == [6, 7, 8]
    view = batch["a"][1:].t()
    del batch
    assert pool.take() is not slot, "a view of the batch is still alive"
    del view
    assert pool.take() is slot, "free again once nothing refers to it"


def test_the_main_process_keeps_worker_slots_mapped_while_the_workers_live(converted, monkeypatch):
    """Each slot's memory crosses once; later batches name the slot; exited workers' slots are dropped."""
    from pipeline.read.batch_memory import registry as slot_registry

    registered = []
    keep = slot_registry._keep_mapped
    monkeypatch.setattr(slot_registry, "_keep_mapped", lambda *args: registered.append(args[0]) or keep(*args))
    stock = stock_samples(converted, "train")
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
    from pipeline.read.batch_memory import registry as slot_registry

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
    from pipeline.read.batch_memory.memory import BatchLayout
    from pipeline.read.batch_memory.registry import rebuild_shared_batch

    layout = BatchLayout.of({"a": ((3,), np.dtype("<f4"))}, 2)
    with pytest.raises(UsageError, match="does not have that slot mapped"):
        rebuild_shared_batch((-1, 12345), None, True, layout, 2, ["x", "y"], [False, False])


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
        assert ds.state_dict() == {**states[0], "epoch": 2, "position": 0, "ended_epoch": 1, "world_size": 3}
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
    with pytest.raises(NotFoundError, match="unknown field"):
        StreamingDataset(converted, fields=("img", "nope"))
    with pytest.raises(ValueError, match="batch_size"):
        StreamingDataset(converted, batch_size=0)
    with pytest.raises(ValueError, match="already batches"):
        ds = StreamingDataset(converted, batch_size=2)
        next(ds.track(DataLoader(ds, batch_size=2)))


def test_a_well_formed_shard_whose_values_differ_from_the_digests_is_refused(converted, tmp_path):
    """A tar member re-encoded with other values, the manifest's size, sha256 and ranges made to match:
    it decodes cleanly, and only the digest comparison can tell."""
    out = copy_output(converted, tmp_path)
    replace_tar_member(out, "train", "p01_aug002", "label", lambda a: (a + 1) % 12, match=True)
    unchecked = {s["__key__"]: s["label"] for s in StreamingDataset(out, fields=("label",), check_digests=False)}
    trusted = {s["__key__"]: s["label"] for s in StreamingDataset(converted, fields=("label",))}
    assert not torch.equal(unchecked["p01_aug002"], trusted["p01_aug002"]), "the altered member decodes cleanly"
    with pytest.raises(OutputError, match=r"p01_aug002\.label: decodes to other values than were converted"):
        list(StreamingDataset(out, fields=("label",)))


class _BuildsAStreamInItsWorker(torch.utils.data.Dataset):
    """A map-style dataset that opens a StreamingDataset where it runs: in a DataLoader worker."""

    def __init__(self, root) -> None:
        self.root = root

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> tuple[int, int, int]:
        ds = StreamingDataset(self.root, "test", ("label",), shuffle=False)
        return len(ds), ds.rank, ds.world_size


def test_a_dataset_can_be_built_inside_a_worker_and_reading_its_world_writes_nothing(converted):
    built = DataLoader(_BuildsAStreamInItsWorker(converted), batch_size=None, num_workers=1)
    assert [tuple(item) for item in built] == [(3, 0, 1)] * 2
    ds = StreamingDataset(converted, "test", ("label",))
    before = dict(ds.__dict__)
    assert (ds.rank, ds.world_size, len(ds)) == (0, 1, 3)
    assert ds.__dict__.keys() == before.keys() and all(ds.__dict__[k] is v for k, v in before.items())
