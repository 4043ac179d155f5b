"""Outputs on object storage: ``convert --out s3://...`` writes there (or refuses), and every command
and reader works on the bucket as on a directory. A real S3-protocol server on 127.0.0.1 (moto), the
session's real Dask cluster, whose workers reach it through their environment."""

from __future__ import annotations

import contextlib
import json
from typing import Iterator

import fsspec
import numpy as np
import pytest
import torch
from test_source_urls import TOKEN, TokenOnly

from pipeline import StreamingDataset, ZarrDataset
from pipeline.cli import main
from pipeline.convert import convert
from pipeline.errors import OutputError
from pipeline.io.filesystems import options_for, url_filesystem
from pipeline.retry import NO_CREDENTIALS
from pipeline.store.codecs import Encoding
from pipeline.store.manifest import read_manifest
from pipeline.store.progress import write_plan
from pipeline.tools.info import info
from pipeline.tools.show import show
from pipeline.tools.show.records import read_wds_records, read_zarr_records
from pipeline.verify import verify
from pipeline.verify.consistency import check_output

from conftest import fast_options, manifest_json


def _bucket_files(url: str) -> dict[str, int]:
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    prefix = url[len("s3://") :]
    return {
        path[len(prefix) + 1 :]: size for path, size in fs.find(prefix, detail=True).items() for size in [size["size"]]
    }


@pytest.fixture(scope="module")
def on_s3(converted, train_zip, test_zip, s3_server, dask_scheduler, tmp_path_factory) -> str:
    """``converted``'s sources converted into a bucket, from a working directory of their own."""
    url = f"s3://{s3_server.new_bucket()}/datasets/ssmspine"
    encodings = {f: Encoding.from_json(e) for f, e in manifest_json(converted)["encodings"].items()}
    convert([train_zip, test_zip], url, fast_options(dask_scheduler, encodings=encodings))
    return url


def test_convert_to_a_bucket_writes_the_same_bytes_there_and_nothing_here(
    converted, train_zip, test_zip, s3_server, dask_scheduler, tmp_path, monkeypatch
):
    """The reported bug: ``--out s3://...`` exited 0 having written a local folder named ``s3:``."""
    monkeypatch.chdir(tmp_path)
    url = f"s3://{s3_server.new_bucket()}/out"
    args = ["convert", str(train_zip), "--out", url, "--scheduler", dask_scheduler, "--no-progress"]
    assert main([*args, "--shard-size", "8MB"]) == 0
    assert list(tmp_path.iterdir()) == [], "nothing is written in the working directory"
    files = _bucket_files(url)
    assert "manifest.json" in files and not any(f.startswith(".progress") or "probe" in f for f in files)
    tars = sorted(f for f in files if f.startswith("wds/"))
    assert tars and all(
        files[t] == s["bytes"] for t, s in zip(tars, manifest_json_of(url)["splits"]["train"]["shards"])
    )


def manifest_json_of(url: str) -> dict:
    return json.loads(fsspec.filesystem("s3", skip_instance_cache=True).cat_file(f"{url}/manifest.json"))


def test_a_bucket_output_is_bit_identical_to_the_local_one(on_s3, converted):
    local, remote = manifest_json(converted), manifest_json_of(on_s3)
    for split in ("train", "test"):
        mine, theirs = remote["splits"][split], local["splits"][split]
        assert [s["sha256"] for s in mine["shards"]] == [s["sha256"] for s in theirs["shards"]]
        assert mine["keys"] == theirs["keys"]
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    zarr_files = sorted(p.relative_to(converted) for p in (converted / "ssmspine.zarr").rglob("c/**/*") if p.is_file())
    for path in zarr_files[:: max(1, len(zarr_files) // 12)]:
        assert fs.cat_file(f"{on_s3}/{path.as_posix()}") == (converted / path).read_bytes(), path


def test_verify_info_and_show_work_on_the_bucket(on_s3, train_zip, test_zip, dask_scheduler, tmp_path):
    assert verify(on_s3, [train_zip, test_zip], scheduler=dask_scheduler).ok
    assert verify(on_s3, scheduler=dask_scheduler).ok
    check = check_output(on_s3, checksums=True)
    assert check.ok and check.shards > 2, check.problems
    data = info(on_s3)
    assert data["samples"] == 15 and data["zarr_bytes"] > 0 and data["dir"] == on_s3
    assert main(["info", on_s3, "--check"]) == 0
    for from_wds in (False, True):
        path = show(on_s3, "test", index=1, from_wds=from_wds, path=tmp_path / f"{from_wds}.png")
        assert path.stat().st_size > 10_000
    [(key, from_tars)] = read_wds_records(on_s3, "test", [2], ["img", "label"])
    [(same_key, from_zarr)] = read_zarr_records(on_s3, "test", [2], ["img", "label"])
    assert key == same_key and all(np.array_equal(from_tars[f], from_zarr[f]) for f in ("img", "label"))


@contextlib.contextmanager
def _bucket_out_of_reach(monkeypatch) -> Iterator[None]:
    """No endpoint and no credentials in this process's environment (the Dask workers keep theirs),
    and no s3fs file system made from them reused, while it lasts."""
    import s3fs

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # the discard port: nothing listens
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("SSMSPINE_RETRIES", "0")
    s3fs.S3FileSystem.clear_instance_cache()  # no file system made from the environment is reused
    try:
        yield
    finally:
        s3fs.S3FileSystem.clear_instance_cache()  # the instances made here must not outlive the test


def test_storage_options_of_the_command_line_reach_the_bucket(on_s3, s3_server, tmp_path, monkeypatch, capsys):
    """With no endpoint and no credentials in the environment, only the options file says where the
    bucket is and who reads it: ``info --check`` reads the manifest, lists and sizes the files, and
    reads every shard with them; ``$SSMSPINE_STORAGE_OPTIONS`` does the same without the option."""
    from pipeline.cli.storage_options import STORAGE_OPTIONS_VARIABLE

    options = tmp_path / "s3.json"
    secret = "s3cr3t-only-in-the-file"
    options.write_text(json.dumps({"endpoint_url": s3_server.endpoint_url, "key": "testing", "secret": secret}))
    with _bucket_out_of_reach(monkeypatch):
        assert main(["info", on_s3, "--json"]) == 2, "without the options the bucket is out of reach"
        assert main(["info", on_s3, "--json", "--check", "--storage-options", str(options)]) == 0
        found = json.loads(capsys.readouterr().out)
        assert found["samples"] == 15 and found["check"]["ok"]
        monkeypatch.setenv(STORAGE_OPTIONS_VARIABLE, str(options))
        assert main(["info", on_s3]) == 0
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err


def test_an_s3_section_of_the_storage_options_reaches_sources_and_the_output(
    on_s3, s3_server, test_zip, tmp_path, monkeypatch, capsys
):
    """A file holding only ``{"s3": {...}}`` (and an ``https`` section for other URLs): ``scan`` of an
    archive in the bucket and ``info`` of the output there (its Zarr store's arrays checked) read
    with the s3 section alone; without the file neither reaches the bucket."""
    source = f"s3://{s3_server.new_bucket()}/releases/{test_zip.name}"
    fsspec.filesystem("s3", skip_instance_cache=True).put_file(str(test_zip), source)
    s3 = {"endpoint_url": s3_server.endpoint_url, "key": "testing", "secret": "testing"}
    options = tmp_path / "options.json"
    options.write_text(json.dumps({"s3": s3, "https": {"headers": {"Authorization": "Bearer elsewhere"}}}))
    with _bucket_out_of_reach(monkeypatch):
        assert main(["scan", source, "--json"]) == 2, "without the options the bucket is out of reach"
        capsys.readouterr()
        assert main(["scan", source, "--json", "--storage-options", str(options)]) == 0
        found = json.loads(capsys.readouterr().out)["sources"][0]
        assert found["samples"] == 3 and found["sample"]["fields"] and found["source"] == source
        assert main(["info", on_s3, "--json", "--storage-options", str(options)]) == 0
        assert json.loads(capsys.readouterr().out)["check"]["ok"]


def test_an_output_at_a_url_is_read_with_its_own_section_only(converted, serve):
    """A Zarr output on an HTTP server that answers only with a header of the ``http`` section: both
    readers' zarr-python stores and ranged reads get it, and never the ``s3`` section beside it
    (fsspec would hand it on to aiohttp, which refuses it)."""
    url = serve(converted, TokenOnly).url
    options = {"http": {"headers": {"Authorization": TOKEN}}, "s3": {"endpoint_url": "http://127.0.0.1:9"}}
    ds = ZarrDataset(url, "test", ("img", "label"), storage_options=options)
    reference = ZarrDataset(converted, "test", ("img", "label"))
    assert ds.keys == reference.keys and ds.fast_fields == ds.fields
    for row in range(len(ds)):
        mine, theirs = ds[row], reference[row]
        assert all(torch.equal(mine[f], theirs[f]) for f in ds.fields), row


def test_each_url_takes_the_flat_options_and_its_own_protocol_section():
    options = {"anon": False, "s3": {"endpoint_url": "http://s3", "anon": True}, "https": {"headers": {"A": "b"}}}
    assert options_for("s3://bucket/key", options) == {"anon": True, "endpoint_url": "http://s3"}
    assert options_for("https://host/out", options) == {"anon": False, "headers": {"A": "b"}}
    assert options_for("http://host/out", options) == {"anon": False}, "https's section is not http's"
    assert options_for("gs://bucket/key", {"client_kwargs": {"x": 1}}) == {"client_kwargs": {"x": 1}}
    assert options_for("s3://bucket/key", None) == {}
    fs, _ = url_filesystem("http://127.0.0.1:9/out", options)
    assert "s3" not in fs.kwargs and "https" not in fs.kwargs and fs.kwargs["anon"] is False


def test_verify_on_the_bucket_finds_an_altered_object(on_s3, s3_server, dask_scheduler, converted):
    """A copy of the output in another bucket, one Zarr shard replaced by a same-size other one."""
    copy = s3_server.upload(converted, parts=("manifest.json", "ssmspine.zarr", "wds"))
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    first, second = (f"{copy}/ssmspine.zarr/train/shape/c/{i}/0/0" for i in (0, 1))
    fs.pipe_file(first, fs.cat_file(second))
    report = verify(copy, scheduler=dask_scheduler)
    assert not report.ok and any(p.where.startswith("zarr:") and ".shape" in p.where for p in report.problems)


def test_both_readers_read_the_bucket_bit_exact(on_s3, converted):
    for split in ("train", "test"):
        local, remote = ZarrDataset(converted, split), ZarrDataset(on_s3, split)
        assert local.keys == remote.keys
        for row in range(len(local)):
            a, b = local[row], remote[row]
            assert all(np.array_equal(a[f].numpy(), b[f].numpy()) for f in local.fields)
    streamed = {s["__key__"]: s for s in StreamingDataset(on_s3, "test", fields=("img", "label"), shuffle=False)}
    for key, sample in streamed.items():
        row = ZarrDataset(converted, "test").keys.index(key)
        reference = ZarrDataset(converted, "test", ("img", "label"))[row]
        assert np.array_equal(sample["img"].numpy(), reference["img"].numpy())
        assert np.array_equal(sample["label"].numpy(), reference["label"].numpy())


def test_streaming_batches_from_the_bucket_are_fetched_at_once_and_bit_exact(on_s3, converted):
    """A batch's ranged reads go out together (``cat_ranges``); the batch equals the local one."""
    fields = ("img", "label", "shape")
    remote = list(StreamingDataset(on_s3, "train", fields=fields, batch_size=5, seed=3))
    local = list(StreamingDataset(converted, "train", fields=fields, batch_size=5, seed=3))
    assert [b["__key__"] for b in remote] == [b["__key__"] for b in local] and len(remote) == 3
    for mine, theirs in zip(remote, local):
        assert all(torch.equal(mine[f], theirs[f]) for f in fields) and torch.equal(mine["__pad__"], theirs["__pad__"])


def test_a_finished_bucket_output_is_a_no_op_and_another_conversion_is_refused_unless_forced(
    on_s3, train_zip, test_zip, s3_server, dask_scheduler, converted
):
    encodings = {f: Encoding.from_json(e) for f, e in manifest_json(converted)["encodings"].items()}
    again = convert([train_zip, test_zip], on_s3, fast_options(dask_scheduler, encodings=encodings))
    assert again.up_to_date and again.samples == 15
    url = f"s3://{s3_server.new_bucket()}/out"
    convert([test_zip], url, fast_options(dask_scheduler))
    with pytest.raises(OutputError, match="other sources or options.*--force"):
        convert([train_zip], url, fast_options(dask_scheduler))
    assert manifest_json_of(url)["splits"]["test"]["samples"] == 3, "nothing of the other output was touched"
    summary = convert([train_zip], url, fast_options(dask_scheduler, force=True))
    assert summary.samples == 12 and set(manifest_json_of(url)["splits"]) == {"train"}
    assert not any(f.startswith("wds/test-") for f in _bucket_files(url)), "--force removed the other conversion"
    assert verify(url, [train_zip], scheduler=dask_scheduler).ok


def test_a_conversion_resumes_on_the_bucket(train_zip, s3_server, dask_scheduler):
    """An interrupted conversion (the manifest and some shards missing, progress records there) converts
    only what is missing."""
    url = f"s3://{s3_server.new_bucket()}/out"
    first = convert([train_zip], url, fast_options(dask_scheduler))
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    shards = manifest_json_of(url)["splits"]["train"]["shards"]
    for shard in shards[:-2]:  # what a run stopped before its last two tasks would have recorded
        fs.pipe_file(f"{url}/.progress/train-{shard['index']:06d}.json", _json(shard))
    write_plan(url, read_manifest(url).plan)  # as the interrupted run had recorded it
    for shard in shards[-2:]:
        fs.rm_file(f"{url}/{shard['file']}")
    fs.rm_file(f"{url}/manifest.json")
    resumed = convert([train_zip], url, fast_options(dask_scheduler))
    assert (resumed.shards_kept, resumed.shards_written) == (len(shards) - 2, 2) and first.samples == resumed.samples
    assert verify(url, [train_zip], scheduler=dask_scheduler).ok


def _json(data) -> bytes:
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    "url, reason",
    [
        ("foo://bucket/out", "unknown URL scheme 'foo'"),
        ("s3://no-such-bucket-7f3e/out", "cannot be written"),
        ("http://{served}/out", "cannot be written"),  # a web server: read-only
    ],
)
def test_an_output_url_that_cannot_be_written_is_one_line_before_any_work(
    train_zip, dask_scheduler, capsys, tmp_path, monkeypatch, serve, url, reason
):
    url = url.format(served=serve(tmp_path / "served").url.split("//")[1].rstrip("/"))
    (tmp_path / "served").mkdir()
    monkeypatch.chdir(tmp_path)
    code = main(["convert", str(train_zip), "--out", url, "--scheduler", dask_scheduler, "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("ssmspine convert: error: ") and url.split("/out")[0] in err and reason in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["served"]


def test_credentials_in_an_output_url_are_never_printed(train_zip, dask_scheduler, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = "s3://user:s3cr3t@no-such-bucket-7f3e/out?X-Amz-Signature=abcdef"
    assert main(["convert", str(train_zip), "--out", url, "--scheduler", dask_scheduler, "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert "s3cr3t" not in captured.err + captured.out and "abcdef" not in captured.err + captured.out


def test_missing_credentials_for_an_output_are_one_line_before_any_work(s3_server, train_zip, tmp_path):
    """No credentials anywhere (environment, config files): botocore cannot sign a request."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL=s3_server.endpoint_url, AWS_SHARED_CREDENTIALS_FILE="/nonexistent")
    env["AWS_CONFIG_FILE"] = "/nonexistent"
    url = f"s3://{s3_server.new_bucket()}/out"
    command = [sys.executable, "-m", "pipeline.cli", "convert", str(train_zip), "--out", url, "--workers", "1"]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"ssmspine convert: error: {url}: cannot be written: {NO_CREDENTIALS}"
    ], done.stderr
    assert NO_CREDENTIALS.startswith("no credentials found: set AWS_ACCESS_KEY_ID")
    assert list(tmp_path.iterdir()) == [] and not fsspec.filesystem("s3", skip_instance_cache=True).ls(
        url[5:].split("/")[0]
    )
