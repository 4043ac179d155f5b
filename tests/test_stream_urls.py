"""StreamingDataset over URLs (a real HTTP server on 127.0.0.1, fsspec) and on damaged shards."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from torch.utils.data import DataLoader

from pipeline import OutputError
from pipeline.read.stream import StreamingDataset
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
