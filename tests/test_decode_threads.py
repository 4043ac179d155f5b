"""The decode thread pool: concurrency, error handling, per-worker defaults, pickling."""

from __future__ import annotations

import pickle
import threading

import numcodecs.blosc
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.read.decode_threads import MAX_THREADS, DecodeThreads, available_cores, default_threads
from pipeline.read.stream import StreamingDataset
from pipeline.read.zarr_dataset import ZarrDataset

#: Generous bound for a barrier between two threads that are both running (never reached when they are).
BARRIER_TIMEOUT = 30


def test_items_run_concurrently_and_each_once():
    barrier = threading.Barrier(2, timeout=BARRIER_TIMEOUT)
    seen, lock = [], threading.Lock()

    def work(item: int) -> None:
        if item < 2:
            barrier.wait()  # both first items must be running at once, or this times out
        with lock:
            seen.append(item)

    DecodeThreads(2).run(work, range(6))
    assert sorted(seen) == list(range(6))


def test_a_failure_is_raised_only_after_every_other_call_ended():
    failing_started = threading.Event()
    ended = []

    def work(item: int) -> None:
        if item == 0:
            failing_started.set()
            raise ValueError("item 0 is damaged")
        failing_started.wait(BARRIER_TIMEOUT)  # still running when item 0 fails
        ended.append(item)

    with pytest.raises(ValueError, match="item 0"):
        DecodeThreads(2).run(work, range(4))
    assert sorted(ended) == [1, 2, 3]


@pytest.mark.parametrize("threads", [1, 2])
def test_started_calls_raise_only_when_waited_for(threads):
    def work(item: int) -> None:
        if item == 1:
            raise ValueError(f"item {item} is damaged")

    decoding = DecodeThreads(threads).start(work, range(3))  # does not raise here
    with pytest.raises(ValueError, match="item 1"):
        decoding.wait()


def test_one_thread_runs_in_the_calling_thread():
    callers = set()
    DecodeThreads(1).run(lambda _: callers.add(threading.get_ident()), range(3))
    assert callers == {threading.get_ident()}


def test_bad_thread_count():
    with pytest.raises(ValueError, match="at least 1"):
        DecodeThreads(0)


def test_pickles_without_threads_and_runs_after():
    decoder = DecodeThreads(2)
    decoder.run(lambda _: None, range(4))  # makes the pool
    copy = pickle.loads(pickle.dumps(decoder))
    out = []
    copy.run(out.append, range(4))
    assert sorted(out) == [0, 1, 2, 3] and copy.threads == 2


class _DefaultThreads(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> int:
        return default_threads()


def test_default_threads_share_the_cores_among_ranks_and_dataloader_workers(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_threads() == max(1, min(MAX_THREADS, available_cores()))
    in_workers = list(DataLoader(_DefaultThreads(), batch_size=None, num_workers=2))
    assert in_workers == [max(1, min(MAX_THREADS, available_cores() // 2))] * 2
    monkeypatch.setattr("pipeline.read.decode_threads.available_cores", lambda: 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # as torchrun --nproc_per_node=4 sets it
    assert default_threads() == 4
    in_workers = list(DataLoader(_DefaultThreads(), batch_size=None, num_workers=2))
    assert in_workers == [2, 2]
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "not a number")
    assert default_threads() == 8


def test_readers_give_the_same_batches_with_any_number_of_threads(converted):
    def stream(threads: int) -> list[dict]:
        ds = StreamingDataset(converted, fields=None, batch_size=4, seed=3, decode_threads=threads)
        return list(ds)

    def zarr(threads: int) -> list[dict]:  # with threads, through zarr-python too (fast=False)
        ds = ZarrDataset(converted, decode_threads=threads, fast=threads == 1)
        return [ds.__getitems__(list(range(i, min(i + 4, len(ds))))) for i in range(0, len(ds), 4)]

    for read in (stream, zarr):
        one, three = read(1), read(3)
        assert len(one) == len(three)
        for a, b in zip(one, three):
            if isinstance(a, list):  # ZarrDataset: a list of samples
                a, b = torch.utils.data.default_collate(a), torch.utils.data.default_collate(b)
            assert a["__key__"] == b["__key__"]
            for field in a:
                if field != "__key__":
                    assert torch.equal(a[field], b[field]), (read.__name__, field)


def test_one_thread_means_blosc_without_its_own_threads_too(monkeypatch):
    monkeypatch.setattr(numcodecs.blosc, "use_threads", None)  # numcodecs' default (zarr sets False)
    seen = []
    DecodeThreads(1).run(lambda _: seen.append(numcodecs.blosc.use_threads), range(3))
    assert seen == [False] * 3 and numcodecs.blosc.use_threads is None, "off while decoding, then restored"
    seen.clear()  # one item with more threads: Blosc may split it over its own threads
    DecodeThreads(2).run(lambda _: seen.append(numcodecs.blosc.use_threads), range(1))
    assert seen == [None]


def test_stopping_early_lets_the_batch_read_ahead_finish(converted, monkeypatch):
    started = []
    start = DecodeThreads.start
    monkeypatch.setattr(DecodeThreads, "start", lambda self, *args: started.append(start(self, *args)) or started[-1])
    batches = iter(StreamingDataset(converted, fields=("img", "label"), batch_size=2, decode_threads=2))
    next(batches)
    batches.close()  # the caller stops after one batch; the next was already decoding
    assert len(started) == 2 and all(future.done() for d in started for future in d.futures)


def test_slot_registry_takes_registrations_from_several_threads():
    from pipeline.read.batch_memory import registry as slot_registry

    storages = [torch.zeros(64, dtype=torch.uint8).untyped_storage() for _ in range(8)]
    dead = 2**22 + 12345  # above the default pid_max: no such process
    errors = []

    def register(thread: int) -> None:
        try:
            for i in range(300):
                slot_registry._keep_mapped((dead, thread * 1000 + i), storages[i % 8])  # pruned by the other
        except Exception as exc:  # noqa: BLE001 - the test reports any failure
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(t,)) for t in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    slot_registry._MAPPED_SLOTS.clear()
