"""Retries in one place: reads over a flaky network come out whole, a dead one fails clearly and soon.

The flaky proxy (tests/http_server.py) is a real HTTP server on 127.0.0.1 in front of the range
server: it answers 503 to every Nth request and closes the connection without an answer on every
Mth, as overloaded object stores and proxies do.
"""

from __future__ import annotations

import errno
import http.client
import logging
import os
import re
from pathlib import Path

import aiohttp
import fsspec
import pytest
from botocore.exceptions import ClientError
from s3fs.errors import translate_boto_error
from torch.utils.data import DataLoader

from pipeline.cli import main
from pipeline.convert import convert
from pipeline.errors import OutputError, SourceError, UnavailableError, UsageError
from pipeline.read.stream import StreamingDataset
from pipeline.read.zarr_fast import remote_shard
from pipeline.retry import NO_CREDENTIALS, RETRIES_ENV, TransientError, is_transient, reason, refusal, retrying
from pipeline.source.members import list_members
from pipeline.store.codecs import Encoding
from pipeline.urls import safe_url

from conftest import assert_bit_exact, fast_options, manifest_json
from stream_common import SEED, expected_keys, flat_keys, stock_samples


@pytest.fixture
def quick_retries(monkeypatch):
    """Two retries without waiting, in this process and the DataLoader workers it starts."""
    monkeypatch.setenv(RETRIES_ENV, "2")
    monkeypatch.setenv("SSMSPINE_RETRY_DELAY", "0")


# --------------------------------------------------------------------------- what is transient


def _client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": f"{code} said"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject",
    )


def _aiohttp_error(status: int) -> aiohttp.ClientResponseError:
    return aiohttp.ClientResponseError(None, (), status=status, message=http.client.responses[status])


def _raised_from(error: Exception, cause: BaseException) -> Exception:
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    "error, transient",
    [
        (ConnectionResetError(errno.ECONNRESET, "reset"), True),
        (TimeoutError("timed out"), True),
        (http.client.RemoteDisconnected("closed"), True),
        (TransientError("HTTP 503 Service Unavailable"), True),
        (_client_error("SlowDown", 503), True),
        (translate_boto_error(_client_error("SlowDown", 503)), True),  # s3fs's OSError(EBUSY) from it
        (translate_boto_error(_client_error("InternalError", 500)), True),
        (_aiohttp_error(503), True),
        (_raised_from(FileNotFoundError("http://x/a.zip"), _aiohttp_error(502)), True),  # fsspec's info
        (aiohttp.ServerDisconnectedError(), True),
        (translate_boto_error(_client_error("NoSuchKey", 404)), False),
        (translate_boto_error(_client_error("AccessDenied", 403)), False),
        (_raised_from(FileNotFoundError("http://x/a.zip"), _aiohttp_error(404)), False),
        (FileNotFoundError("a.zip"), False),
        (PermissionError("a.zip"), False),
        (ValueError("Protocol not known: foo"), False),
        (OutputError("shard is missing"), False),
    ],
    ids=repr,
)
def test_what_is_transient(error, transient):
    assert is_transient(error) is transient


def test_a_reason_is_the_answer_or_the_innermost_error():
    assert reason(translate_boto_error(_client_error("SlowDown", 503))) == "HTTP 503 SlowDown: SlowDown said"
    assert reason(_raised_from(FileNotFoundError("u"), _aiohttp_error(503))) == "HTTP 503 Service Unavailable"
    assert reason(ConnectionResetError("reset by peer")) == "ConnectionResetError: reset by peer"
    assert reason(OSError("see https://h/a.zip?X-Amz-Signature=secret now")) == "OSError: see https://h/a.zip now"
    missing = FileNotFoundError("https://user:pw@h/out/manifest.json")
    assert reason(missing) == "FileNotFoundError: https://user@h/out/manifest.json", "no password in a message"


def test_a_refusal_says_why_in_the_users_terms():
    gone = FileNotFoundError("bucket/out/manifest.json")
    assert refusal(gone, "bucket/out/manifest.json") == "not found (no such object)"
    assert refusal(gone, missing="shard is missing") == "shard is missing (FileNotFoundError: bucket/out/manifest.json)"
    assert refusal(_raised_from(FileNotFoundError("u"), _aiohttp_error(403))).startswith("access denied (HTTP 403")
    assert refusal(OSError("disk on fire"), failed="cannot be read") == "cannot be read (OSError: disk on fire)"
    unsigned = type("NoCredentialsError", (Exception,), {})("Unable to locate credentials")
    assert refusal(unsigned, reading=False) == NO_CREDENTIALS, "a write cannot be anonymous"
    assert refusal(unsigned).startswith(NO_CREDENTIALS + ", or anonymous access")


def test_retrying_tries_again_until_the_read_passes_or_the_retries_are_spent(quick_retries):
    calls = []

    def flaky(fails: int, error: Exception):
        def read():
            calls.append(1)
            if len(calls) <= fails:
                raise error
            return "data"

        return read

    assert retrying("s3://b/a.zip", flaky(2, ConnectionResetError("reset"))) == "data" and len(calls) == 3
    calls.clear()
    with pytest.raises(UnavailableError, match=r"^s3://b/a\.zip: still failing after 3 attempt\(s\), last with "):
        retrying("s3://b/a.zip", flaky(3, TransientError("HTTP 503 Slow Down")))
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(FileNotFoundError):
        retrying("s3://b/a.zip", flaky(1, FileNotFoundError("a.zip")))
    assert len(calls) == 1, "not found is not tried again"


def test_zarr_shards_at_urls_are_read_with_the_same_retries_and_errors(quick_retries, monkeypatch):
    """The Zarr fast path's ranged reads (a RemoteObject): a dropped connection is tried again, a
    refusal is one line naming the shard, and a missing shard passes for the caller to handle."""
    fsspec.filesystem("memory").pipe_file("/retries/shard", b"0123456789")
    shard = remote_shard("memory:///retries/shard", {})
    cat_file, reads = shard.fs.cat_file, []

    def dropped_once(*args, **kwargs):
        reads.append(args)
        if len(reads) == 1:
            raise ConnectionResetError("reset by peer")
        return cat_file(*args, **kwargs)

    monkeypatch.setattr(shard.fs, "cat_file", dropped_once)
    assert shard.read(2, 3) == b"234" and len(reads) == 2

    def refused(*args, **kwargs):
        raise PermissionError("no")

    monkeypatch.setattr(shard.fs, "cat_file", refused)
    named = re.escape(safe_url("memory:///retries/shard"))
    with pytest.raises(OutputError, match=rf"^{named}: access denied \(PermissionError: no\)"):
        shard.read(0, 1)
    with pytest.raises(FileNotFoundError):
        remote_shard("memory:///retries/none", {}).size()


def test_every_remote_read_fails_through_one_mapping_naming_the_object_without_secrets(quick_retries, monkeypatch):
    """An output's files (Storage), its shards (one and a batch at once), a Zarr shard and a source
    archive: a lasting failure is one line of the caller's error type naming the object by its URL
    without password and query, in the user's terms, and the library's words without those secrets."""
    from pipeline.source.remote import RemoteArchive
    from pipeline.storage import Storage
    from pipeline.store.range_readers import RangeRead
    from pipeline.store.remote_ranges import FsspecRangeReader

    root = "memory://user:s3cr3t@/mapping/out?sig=abcdef"
    signed = lambda relative: root.replace("?", f"/{relative}?")  # noqa: E731
    said = OSError("the server said: signature abcdef for s3cr3t does not match")

    def refused(*args, **kwargs):
        raise said

    fs = fsspec.filesystem("memory")
    for method in ("info", "size", "cat_file", "exists"):
        monkeypatch.setattr(fs, method, refused)
    monkeypatch.setattr(fs, "cat_ranges", lambda paths, *args, **kwargs: [said for _ in paths])
    reader = FsspecRangeReader(root, ["wds/a.tar"], [10])
    attempts = {
        "manifest.json": (OutputError, lambda: Storage(root).read_bytes("manifest.json")),
        "wds/a.tar": (OutputError, lambda: reader.read(0, 0, 4)),
        "zarr/c/0": (OutputError, lambda: remote_shard(signed("zarr/c/0"), {}).read(0, 4)),
        "in.zip": (SourceError, lambda: RemoteArchive(signed("in.zip"))),
    }
    for relative, (kind, attempt) in attempts.items():
        with pytest.raises(kind) as error:
            attempt()
        line = str(error.value)
        assert line.startswith(f"memory://user@/mapping/out/{relative}: "), line
        assert "(OSError: the server said: signature *** for *** does not match)" in line, line
        assert "s3cr3t" not in line and "abcdef" not in line and "\n" not in line, line
    monkeypatch.setattr(fs, "size", lambda path: 10)
    with pytest.raises(
        OutputError, match=r"^memory://user@/mapping/out/wds/a\.tar: cannot be read \(OSError: .*\*\*\*"
    ):
        reader.read_many([RangeRead(0, 0, 2), RangeRead(0, 4, 2)])


def test_a_failure_that_passes_too_long_keeps_the_secrets_out_too(quick_retries, monkeypatch, caplog):
    """Retries spent: the UnavailableError and the log lines of the retries carry the library's words
    without the URL's secrets, as a lasting failure's line does."""
    from pipeline.errors import UnavailableError
    from pipeline.store.remote_ranges import FsspecRangeReader

    root = "memory://user:s3cr3t@/passing/out?sig=abcdef"
    fs = fsspec.filesystem("memory")

    def reset(*args, **kwargs):
        raise ConnectionResetError("reset while sending signature abcdef for s3cr3t")

    monkeypatch.setattr(fs, "size", lambda path: 10)
    monkeypatch.setattr(fs, "cat_file", reset)
    with caplog.at_level(logging.INFO, logger="pipeline.retry"), pytest.raises(UnavailableError) as error:
        FsspecRangeReader(root, ["wds/a.tar"], [10]).read(0, 0, 4)
    said = [str(error.value)] + [r.getMessage() for r in caplog.records]
    assert len(said) > 1 and all("signature *** for ***" in line for line in said), said
    assert not any("s3cr3t" in line or "abcdef" in line for line in said), said


def test_a_batch_at_once_tries_again_only_the_ranges_that_failed(quick_retries, monkeypatch):
    """``read_many`` (one ``cat_ranges`` for a batch of ranges of two shards): a range whose request was
    dropped is asked for again alone, and every range comes out whole, in order."""
    from pipeline.store.range_readers import RangeRead
    from pipeline.store.remote_ranges import FsspecRangeReader

    fs = fsspec.filesystem("memory")
    fs.pipe_file("/batch/a.tar", b"0123456789")
    fs.pipe_file("/batch/b.tar", b"abcdefghij")
    cat_ranges, asked = fs.cat_ranges, []

    def second_dropped_once(paths, starts, ends, **kwargs):
        asked.append(list(zip(paths, starts)))
        got = cat_ranges(paths, starts, ends, **kwargs)
        return [ConnectionResetError("reset by peer") if len(asked) == 1 and i == 1 else g for i, g in enumerate(got)]

    monkeypatch.setattr(fs, "cat_ranges", second_dropped_once)
    reader = FsspecRangeReader("memory:///batch", ["a.tar", "b.tar"], [10, 10])
    views = reader.read_many([RangeRead(0, 1, 3), RangeRead(1, 2, 4), RangeRead(0, 8, 2)])
    assert [bytes(v) for v in views] == [b"123", b"cdef", b"89"]
    assert asked == [[("/batch/a.tar", 1), ("/batch/b.tar", 2), ("/batch/a.tar", 8)], [("/batch/b.tar", 2)]]


@pytest.mark.parametrize("value", ["many", "-1"])
def test_a_bad_retry_setting_is_named(monkeypatch, value):
    monkeypatch.setenv(RETRIES_ENV, value)
    with pytest.raises(UsageError, match=rf"{RETRIES_ENV}='{value}'"):
        retrying("x", lambda: None)


# --------------------------------------------------------------------------- a flaky network


def test_streaming_through_a_flaky_proxy_reads_every_sample_bit_exact(converted, serve, flaky_proxy, quick_retries):
    proxy = flaky_proxy(serve(converted).url, fail_every=3, drop_every=5)
    stock = stock_samples(converted, "train")
    ds = StreamingDataset(proxy.url, fields=None, seed=SEED, batch_size=4)
    batches = list(DataLoader(ds, batch_size=None, num_workers=2))
    assert flat_keys(batches) == expected_keys(ds.keys, 0, 0, 1)
    for batch in batches:
        for row, key in enumerate(batch["__key__"]):
            for field in ds.fields:
                assert_bit_exact(batch[field][row].numpy(), stock[key][field], f"{key}.{field}")
    assert {"503", "drop"} <= set(proxy.failed.values()), "the proxy failed requests both ways"


@pytest.mark.slow
def test_converting_through_a_flaky_proxy_gives_the_output_of_the_files(
    converted, train_zip, test_zip, serve, flaky_proxy, dask_scheduler, tmp_path
):
    """The Dask workers retry with the default settings: a few quarter-second waits."""
    root = Path(os.path.commonpath([train_zip.parent, test_zip.parent]))
    proxy = flaky_proxy(serve(root).url, fail_every=4, drop_every=7)
    urls = [proxy.url + p.relative_to(root).as_posix() for p in (train_zip, test_zip)]
    local = manifest_json(converted)
    encodings = {f: Encoding.from_json(e) for f, e in local["encodings"].items()}
    out = tmp_path / "out"
    convert(urls, out, fast_options(dask_scheduler, encodings=encodings))
    remote = manifest_json(out)
    for split in ("train", "test"):
        shards = remote["splits"][split]["shards"]
        assert [s["sha256"] for s in shards] == [s["sha256"] for s in local["splits"][split]["shards"]]
        assert all((out / s["file"]).read_bytes() == (converted / s["file"]).read_bytes() for s in shards)
    assert {"503", "drop"} <= set(proxy.failed.values()), "the proxy failed requests both ways"


@pytest.mark.parametrize("fate", ["503", "drop"])
def test_a_server_that_always_fails_is_one_clear_error_after_the_retries(
    fate, converted, train_zip, serve, flaky_proxy, dask_scheduler, quick_retries, tmp_path, capsys
):
    how = {"fail_every": 1} if fate == "503" else {"drop_every": 1}
    proxy = flaky_proxy(serve(converted).url, always=True, **how)
    with pytest.raises(UnavailableError, match=rf"^{proxy.url}manifest\.json: still failing after 3 attempt\(s\)"):
        StreamingDataset(proxy.url)
    assert 3 <= proxy.requests <= 2 * 3, "three attempts; aiohttp sends a dropped request again once, as below"

    proxy = flaky_proxy(serve(train_zip.parent).url, always=True, **how)
    url = proxy.url + train_zip.name
    assert main(["convert", url, "--out", str(tmp_path / "out"), "--scheduler", dask_scheduler]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"ssmspine convert: error: {url}: still failing after 3 attempt(s), last with ")
    assert 3 <= proxy.requests <= 4 * 3, "fsspec's size query may try HEAD and GET, aiohttp a reused connection twice"
    assert not (tmp_path / "out").exists()


def test_not_found_is_not_tried_again(converted, train_zip, serve, flaky_proxy):
    """With the default retries: a missing manifest or archive is one answer, not five."""
    proxy = flaky_proxy(serve(converted).url)
    with pytest.raises(OutputError, match="manifest.json: not found"):
        StreamingDataset(proxy.url + "elsewhere/")
    assert proxy.requests == 1
    proxy = flaky_proxy(serve(train_zip.parent).url)
    with pytest.raises(SourceError, match="not found"):
        list_members(proxy.url + "SSMSpine_Test.zip")
    assert proxy.requests <= 2, "fsspec asks with HEAD, then GET, once"
