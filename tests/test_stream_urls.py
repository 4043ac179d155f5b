"""StreamingDataset over URLs (a real HTTP server on 127.0.0.1, fsspec) and on damaged shards."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from torch.utils.data import DataLoader

from pipeline import OutputError
from pipeline.errors import UsageError
from pipeline.io.shard_cache import FOLDER
from pipeline.read.stream import StreamingDataset
from pipeline.read.stream.sources import Source
from pipeline.store.cached_ranges import wait_for_fills
from pipeline.store.manifest import read_manifest

from conftest import assert_bit_exact, copy_output
from http_server import RangeHandler
from stream_common import SEED, assert_same_as_stock, expected_keys, flat_keys, stock_samples

# --------------------------------------------------------------------------- URLs


@pytest.mark.parametrize("scheme", ["http", "file"])
def test_urls_read_the_same_samples(converted, serve, scheme):
    url = serve(converted).url if scheme == "http" else converted.as_uri()
    stock = stock_samples(converted, "train")
    ds = StreamingDataset(url, fields=None, seed=SEED, batch_size=4)
    batches = list(DataLoader(ds, batch_size=None, num_workers=2 if scheme == "http" else 0))
    assert flat_keys(batches) == expected_keys(ds.keys, 0, 0, 1)
    for batch in batches:
        for row, key in enumerate(batch["__key__"]):
            for field in ds.fields:
                assert_bit_exact(batch[field][row].numpy(), stock[key][field], f"{scheme} {key}.{field}")


def test_storage_options_reach_every_read_of_the_stream(converted, s3_server, monkeypatch):
    """With the environment pointing at a closed port, only the options say where the bucket is: the
    manifest, the shards in this process and in DataLoader workers are all read with them (as
    ZarrDataset's are)."""
    import s3fs

    url = s3_server.upload(converted, parts=("manifest.json", "wds"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # the discard port: nothing listens
    monkeypatch.setenv("SSMSPINE_RETRIES", "0")
    s3fs.S3FileSystem.clear_instance_cache()  # no filesystem made with the server's endpoint is reused
    with pytest.raises(OutputError):
        StreamingDataset(url, "test")
    s3fs.S3FileSystem.clear_instance_cache()  # the instance made for the closed port must not outlive the test
    monkeypatch.delenv("SSMSPINE_RETRIES")
    options = {"endpoint_url": s3_server.endpoint_url}
    stock = stock_samples(converted, "test")
    ds = StreamingDataset(url, "test", ("label", "shape"), seed=SEED, batch_size=2, storage_options=options)
    for workers in (0, 2):
        batches = list(DataLoader(ds, batch_size=None, num_workers=workers))
        assert sorted(flat_keys(batches)) == sorted(ds.keys)
        for batch in batches:
            for row, key in enumerate(batch["__key__"]):
                assert_bit_exact(batch["label"][row].numpy(), stock[key]["label"], f"s3 {key}.label")


def test_a_server_without_range_requests_is_an_error(converted, serve):
    url = serve(converted, type("NoRanges", (RangeHandler,), {"ranges": False})).url
    with pytest.raises(OutputError, match="Range"):
        next(iter(StreamingDataset(url)))


def test_many_shards_with_few_open_files(converted, monkeypatch):
    from pipeline.store import location as storage

    monkeypatch.setattr(storage.LocalRangeReader, "max_open", 2)
    stock = stock_samples(converted, "train")
    ds = StreamingDataset(converted, fields=("label", "shape"), seed=SEED)
    assert len(read_manifest(converted).splits["train"].shards) > 2
    assert assert_same_as_stock(ds, stock, ds.fields) == expected_keys(ds.keys, 0, 0, 1)


def _damage(out: Path, how: str) -> str:
    """Damage the second shard of ``train``; return its file name."""
    shard = read_manifest(out).splits["train"].shards[1]
    path = out / shard.file
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        os.truncate(path, shard.bytes - 1000)
    else:  # flip bytes in the middle of a sample's first payload (img), keeping the size
        offset, size = shard.payloads[0][0:2]
        with open(path, "r+b") as file:
            file.seek(offset + size // 2)
            chunk = file.read(64)
            file.seek(offset + size // 2)
            file.write(bytes(b ^ 0x5A for b in chunk))
    return shard.file


@pytest.mark.parametrize("how", ["missing", "truncated", "corrupt"])
@pytest.mark.parametrize("scheme", ["local", "http", "file"])
def test_damaged_shard_is_an_error_naming_it(converted, tmp_path, serve, how, scheme):
    out = copy_output(converted, tmp_path)
    name = _damage(out, how)
    root = {"local": out, "http": serve(out).url if scheme == "http" else None, "file": out.as_uri()}[scheme]
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
    before = len(read_manifest(out).splits["train"].shards[0].keys)
    assert before >= (batch or 1), "the first shard fills a batch, so an early error would show"
    assert received == ds.keys[: len(received)] and len(received) == before - before % (batch or 1)


# --------------------------------------------------------------------------- caching shards at URLs


def _cached(cache_dir: Path) -> set[str]:
    """The sha256 of every complete entry of the shard cache under ``cache_dir``."""
    return {p.stem for p in (cache_dir / FOLDER).glob("*/*.tar")}


def _assert_as_stock(batches, stock, fields, what):
    for batch in batches:
        for row, key in enumerate(batch["__key__"]):
            for field in fields:
                assert_bit_exact(batch[field][row].numpy(), stock[key][field], f"{what} {key}.{field}")


def test_a_cached_second_epoch_reads_nothing_from_the_server(converted, serve, tmp_path):
    """Epoch 0 reads by ranges while one fill per shard copies it whole; epoch 1 asks the server nothing."""
    server = serve(converted)
    shards = read_manifest(converted).splits["train"].shards
    fields = ("label", "shape")
    ds = StreamingDataset(server.url, fields=fields, seed=SEED, batch_size=4, cache_dir=tmp_path, cache_limit=1 << 30)
    stock = stock_samples(converted, "train")
    _assert_as_stock(list(ds), stock, fields, "epoch 0")
    wait_for_fills()
    assert _cached(tmp_path) == {s.sha256 for s in shards}
    assert any(r.start is not None and r.end - r.start + 1 < min(s.bytes for s in shards) for r in server.requests)
    server.requests.clear()
    ds.set_epoch(1)
    second = list(ds)
    assert server.requests == [], "a cached epoch made requests"
    assert flat_keys(second) == expected_keys(ds.keys, 1, 0, 1)
    _assert_as_stock(second, stock, fields, "epoch 1")


def test_a_shard_changed_since_conversion_stops_the_reading_once_a_fill_finds_it(converted, serve, tmp_path):
    """A byte of a shard's tar header changed: its payloads still read, but the fill's sha256 check
    proves the object is not the manifest's, and the next read of that shard says so."""
    out = copy_output(converted, tmp_path)
    shard = read_manifest(out).splits["test"].shards[0]
    path = out / shard.file
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF  # inside the first member's tar header (its mode field): no payload changes
    path.write_bytes(bytes(data))
    server = serve(out)
    ds = StreamingDataset(server.url, "test", ("label",), seed=SEED, cache_dir=tmp_path / "cache", cache_limit=1 << 30)
    with pytest.raises(OutputError, match=rf"{shard.file}: its sha256 is .* the object changed after the output"):
        for _ in range(2):  # the first pass reads by ranges while the fill runs, unless the fill ends first
            list(ds)
            wait_for_fills()
    assert shard.sha256 not in _cached(tmp_path / "cache"), "nothing of the changed object kept"


def test_a_cache_smaller_than_a_shard_caches_nothing_and_reads_by_ranges(converted, serve, tmp_path):
    server = serve(converted)
    smallest = min(s.bytes for s in read_manifest(converted).splits["test"].shards)
    ds = StreamingDataset(server.url, "test", ("label",), seed=SEED, cache_dir=tmp_path, cache_limit=smallest - 1)
    stock = stock_samples(converted, "test")
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        server.requests.clear()
        assert assert_same_as_stock(ds, stock, ("label",)) == expected_keys(ds.keys, epoch, 0, 1)
        wait_for_fills()
        assert _cached(tmp_path) == set() and server.requests
    assert {p.name for p in (tmp_path / FOLDER).rglob("*") if p.is_file()} <= {"evict.lock"}


def test_the_ranks_of_a_machine_share_one_cache(converted, serve, tmp_path):
    """A second dataset on the same cache_dir, read in a DataLoader worker (another process, which opens
    the cache itself), finds every shard the first one copied: not one request reaches the server."""
    server = serve(converted)
    options = {"fields": ("label",), "seed": SEED, "batch_size": 2, "cache_dir": tmp_path, "cache_limit": 1 << 30}
    list(StreamingDataset(server.url, "test", **options))
    wait_for_fills()
    other = StreamingDataset(server.url, "test", **options)
    server.requests.clear()
    batches = list(DataLoader(other, batch_size=None, num_workers=1))
    assert server.requests == [] and sorted(flat_keys(batches)) == sorted(other.keys)
    _assert_as_stock(batches, stock_samples(converted, "test"), ("label",), "rank 1")


def test_cache_options_are_checked(converted, serve, tmp_path):
    url = serve(converted).url
    for root, options, message in [
        (converted, {"cache_dir": tmp_path, "cache_limit": 1 << 20}, "for outputs at URLs"),
        (url, {"cache_dir": tmp_path}, "needs cache_limit"),
        (url, {"cache_limit": 1 << 20}, "give cache_dir"),
        (url, {"cache_dir": tmp_path, "cache_limit": -1}, "cache_limit must be"),
        (url, {"cache_dir": "s3://bucket/cache", "cache_limit": 1}, "local folder"),
    ]:
        with pytest.raises(UsageError, match=message):
            StreamingDataset(root, "test", **options)


def test_a_mixture_caches_its_sources_at_urls_and_reads_the_local_ones_in_place(converted, serve, tmp_path):
    server = serve(converted)
    sources = [Source(server.url, "test", weight=1), Source(converted, "train", weight=1)]
    ds = StreamingDataset(sources, fields=("label",), epoch_size=8, seed=SEED, cache_dir=tmp_path, cache_limit=1 << 30)
    stock = {**stock_samples(converted, "test"), **stock_samples(converted, "train")}
    list(ds)
    wait_for_fills()
    assert _cached(tmp_path) == {s.sha256 for s in read_manifest(converted).splits["test"].shards}
    server.requests.clear()
    ds.set_epoch(1)
    assert len(assert_same_as_stock(ds, stock, ("label",))) == 8 and server.requests == []
