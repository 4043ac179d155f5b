"""Sources at URLs, read in place: a real S3 server (moto) and a real HTTP server on 127.0.0.1.

Converting from URLs must give the very output converting the same files gives, read with ranged
requests only (a member costs one), with the same one-line errors for damaged members and for
URLs that cannot be read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import fsspec
import pytest
from test_damaged_archives import VICTIM, data_span, tiny_zip

from pipeline.cli import main
from pipeline.convert import convert
from pipeline.errors import SourceError
from pipeline.schema import FIELDS
from pipeline.source.members import fingerprint, list_members
from pipeline.source.zip_local import LOCAL_HEADER_MARGIN
from pipeline.source.zip_reader import SourceReader
from pipeline.store.codecs import Encoding
from pipeline.tools.synth import SynthConfig, write_archive
from pipeline.verify import verify

from conftest import fast_options, manifest_json
from http_server import RangeHandler

#: What opening an archive reads from its end (docs/OBJECT_STORAGE.md); set here, not taken from the code.
TAIL_AT_MOST = 64 << 10


def _upload(s3_server, *paths: Path) -> list[str]:
    bucket = s3_server.new_bucket()
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    for path in paths:
        fs.put_file(str(path), f"{bucket}/releases/{path.name}")
    return [f"s3://{bucket}/releases/{path.name}" for path in paths]


def _served(serve, *paths: Path):
    """One HTTP server for ``paths`` (under one common folder) and their URLs."""
    root = Path(os.path.commonpath([p.parent for p in paths]))
    server = serve(root)
    return server, [server.url + p.relative_to(root).as_posix() for p in paths]


def _record_bytes(info: zipfile.ZipInfo) -> int:
    """What one read of a member asks for: local header, name, extra (as the directory has them), margin, data."""
    return 30 + len(info.orig_filename.encode()) + len(info.extra) + LOCAL_HEADER_MARGIN + info.compress_size


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["s3", "http"])
def test_converting_from_urls_gives_the_output_of_the_files(
    scheme, converted, train_zip, test_zip, s3_server, serve, dask_scheduler, tmp_path
):
    """Same tars byte for byte, same digests and Zarr shards; the identity differs in the path alone."""
    if scheme == "s3":
        server, urls = None, _upload(s3_server, train_zip, test_zip)
    else:
        server, urls = _served(serve, train_zip, test_zip)
    local = manifest_json(converted)
    encodings = {f: Encoding.from_json(e) for f, e in local["encodings"].items()}  # measured ones may differ
    out = tmp_path / "out"
    convert(urls, out, fast_options(dask_scheduler, encodings=encodings))
    remote = manifest_json(out)
    for split in ("train", "test"):
        mine, theirs = remote["splits"][split], local["splits"][split]
        assert mine["keys"] == theirs["keys"] and mine["members"] == theirs["members"]
        assert [s["sha256"] for s in mine["shards"]] == [s["sha256"] for s in theirs["shards"]]
        assert [s["digests"] for s in mine["shards"]] == [s["digests"] for s in theirs["shards"]]
        for shard in mine["shards"]:
            assert (out / shard["file"]).read_bytes() == (converted / shard["file"]).read_bytes()
    zarr_files = sorted(p.relative_to(converted) for p in (converted / "ssmspine.zarr").rglob("c/**/*") if p.is_file())
    assert zarr_files and all((out / p).read_bytes() == (converted / p).read_bytes() for p in zarr_files)
    for url, theirs, mine in zip(urls, local["identity"]["sources"], remote["identity"]["sources"]):
        assert mine == {**theirs, "path": url}
    if server is not None:
        for path in (train_zip, test_zip):
            _assert_read_in_ranges(server.requests, path)
    assert main(["verify", *urls, "--out", str(out), "--scheduler", dask_scheduler, "--no-progress"]) == 0


def _assert_read_in_ranges(requests, path: Path) -> None:
    """Every GET of ``path`` asked for a range; together they add up to its members (each read once,
    one of them also for the plan, each with its margin) and a tail per opening, not to whole downloads."""
    size = path.stat().st_size
    gets = [r for r in requests if r.method == "GET" and r.path.endswith("/" + path.name)]
    assert gets and all(r.start is not None for r in gets), "a GET without Range downloads the whole archive"
    with zipfile.ZipFile(path) as archive:
        largest = max(_record_bytes(info) for info in archive.infolist())
        headers = {info.header_offset for info in archive.infolist()}
    tails = [r for r in gets if r.end == size - 1 and r.start not in headers]  # member reads start at headers
    assert tails and all(r.body_bytes <= TAIL_AT_MOST for r in tails), "an opening reads a small tail"
    member_bytes = sum(r.body_bytes for r in gets) - sum(r.body_bytes for r in tails)
    allowed = size + largest + (len(gets) - len(tails)) * LOCAL_HEADER_MARGIN
    assert member_bytes <= allowed, f"{member_bytes} bytes of members read from a {size}-byte archive"
    assert max(r.body_bytes for r in gets) <= max(largest, TAIL_AT_MOST)


def test_each_member_costs_one_ranged_request(train_zip, serve):
    server, [url] = _served(serve, train_zip)
    with zipfile.ZipFile(train_zip) as archive:
        infos = [info for info in archive.infolist() if not info.is_dir()]
        expected = {info.filename: archive.read(info) for info in infos}
    with SourceReader(url) as reader:
        assert {name: reader.read_bytes(name) for name in expected} == expected
    heads = [r for r in server.requests if r.method == "HEAD"]
    gets = [r for r in server.requests if r.method == "GET"]
    assert len(heads) == 1 and len(gets) == 1 + len(infos), "one tail, then one request per member"
    assert all(r.start is not None for r in gets)
    for info in infos:  # each member's local header and data within a single request
        start, length = data_span(train_zip, info.filename)
        assert any(r.start <= info.header_offset and start + length - 1 <= r.end for r in gets), info.filename
    size = train_zip.stat().st_size
    assert sum(r.body_bytes for r in gets) <= size + TAIL_AT_MOST + len(infos) * LOCAL_HEADER_MARGIN


def test_a_local_header_longer_than_the_directory_says_costs_a_second_request(tmp_path, serve, monkeypatch):
    """zip64 local headers carry an extra field their directory entries lack; with no margin, the
    reader must ask for the rest rather than misplace the data (the tail is made small, so that
    every member of this small archive lies outside it)."""
    from pipeline.source import remote, zip_local

    monkeypatch.setattr(zip_local, "LOCAL_HEADER_MARGIN", 0)
    monkeypatch.setattr(remote, "TAIL_BYTES", 64)
    archive = tiny_zip(tmp_path / "zip64.zip", force_zip64=True)
    server, [url] = _served(serve, archive)
    with zipfile.ZipFile(archive) as z:
        infos = z.infolist()
        expected = {info.filename: z.read(info) for info in infos}
    with SourceReader(url) as reader:
        assert {name: reader.read_bytes(name) for name in expected} == expected
    gets = [r for r in server.requests if r.method == "GET"]
    for info in infos:
        start, length = data_span(archive, info.filename)
        assert start - info.header_offset > 30 + len(info.filename) + len(info.extra), "the local header is longer"
        touching = [r for r in gets if r.start < start + length and r.end >= info.header_offset]
        assert len(touching) == 2 and touching[0].start == info.header_offset, info.filename


def _flip_a_compressed_byte(path: Path) -> None:
    start, length = data_span(path, VICTIM)
    data = bytearray(path.read_bytes())
    data[start + length // 2] ^= 0x5A
    path.write_bytes(bytes(data))


def _cut_the_local_header(path: Path) -> None:
    """The victim's local header loses its signature: the directory still points at it."""
    with zipfile.ZipFile(path) as archive:
        offset = archive.getinfo(VICTIM).header_offset
    data = bytearray(path.read_bytes())
    data[offset : offset + 4] = b"XXXX"
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_flip_a_compressed_byte, _cut_the_local_header])
def test_a_damaged_member_at_a_url_is_named_as_in_a_file(tmp_path, serve, damage):
    archive = tiny_zip(tmp_path / "SSMSpine_Train.zip")
    damage(archive)
    _, [url] = _served(serve, archive)
    errors = []
    for source in (str(archive), url):
        with SourceReader(source) as reader, pytest.raises(SourceError) as error:
            reader.read_bytes(VICTIM)
        errors.append(str(error.value))
    assert errors[1] == errors[0].replace(str(archive), url)
    assert errors[1].startswith(f"{url}: {VICTIM}: ")


@pytest.mark.slow
def test_a_damaged_member_at_a_url_stops_convert_with_one_line(tmp_path, serve, dask_scheduler, capsys):
    archive = tiny_zip(tmp_path / "src" / "SSMSpine_Train.zip")
    _flip_a_compressed_byte(archive)
    _, [url] = _served(serve, archive)
    lines = []
    for source, out in ((str(archive), "local"), (url, "remote")):
        args = ["convert", source, "--out", str(tmp_path / out), "--scheduler", dask_scheduler, "--no-progress"]
        assert main(args) == 2
        lines.append(capsys.readouterr().err.splitlines())
    assert len(lines[1]) == 1 and lines[1] == [line.replace(str(archive), url) for line in lines[0]]
    assert lines[1][0].startswith(f"ssmspine convert: error: {url}: {VICTIM}: ")


class _Forbidden(RangeHandler):
    def _answer(self, body: bool) -> None:
        self.send_error(403)


@pytest.mark.parametrize(
    "case, reason",
    [
        ("scheme", "unknown URL scheme 'foo'"),
        ("bucket", "not found (HTTP 404 NoSuchBucket: The specified bucket does not exist)"),
        ("object", "not found (no such object)"),
        ("http-404", "not found (HTTP 404 Not Found)"),
        ("http-403", "access denied (HTTP 403 Forbidden)"),
        ("folder", "is a folder: a source at a URL must be a zip archive"),
    ],
)
def test_a_url_that_cannot_be_read_is_one_line_and_exit_2_before_any_work(
    case, reason, train_zip, s3_server, serve, dask_scheduler, tmp_path, capsys
):
    bucket_url = _upload(s3_server, train_zip)[0].rsplit("/", 2)[0]
    url = {
        "scheme": "foo://host/SSMSpine_Train.zip",
        "bucket": "s3://no-such-bucket-here/SSMSpine_Train.zip",
        "object": f"{bucket_url}/releases/SSMSpine_Test.zip",
        "http-404": serve(train_zip.parent).url + "SSMSpine_Test.zip",
        "http-403": serve(train_zip.parent, _Forbidden).url + train_zip.name,
        "folder": f"{bucket_url}/releases",
    }[case]
    out = tmp_path / "out"
    args = ["convert", str(train_zip), url, "--out", str(out), "--scheduler", dask_scheduler, "--no-progress"]
    assert main(args) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"ssmspine convert: error: {url}: {reason}")
    assert not out.exists(), "nothing is written before every source is listed"


@pytest.mark.slow
def test_missing_credentials_are_one_line_and_exit_2(train_zip, s3_server, tmp_path):
    """moto accepts any credentials, so what is tested is their absence, which botocore refuses itself."""
    [url] = _upload(s3_server, train_zip)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") or k == "AWS_ENDPOINT_URL"}
    nowhere = str(tmp_path / "none")
    env.update(AWS_SHARED_CREDENTIALS_FILE=nowhere, AWS_CONFIG_FILE=nowhere, AWS_EC2_METADATA_DISABLED="true")
    command = [str(Path(sys.executable).with_name("ssmspine")), "convert", url, "--out", "out", "--workers", "1"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"ssmspine convert: error: {url}: no credentials found: ")
    assert "AWS_ACCESS_KEY_ID" in result.stderr and not (tmp_path / "out").exists()


def test_a_url_names_itself_without_its_secrets(train_zip, serve):
    """A password and a presigned query never reach a message or the fingerprint."""
    server, [url] = _served(serve, train_zip)
    secret = url.replace("http://", "http://reader:hunter2@") + "?X-Amz-Signature=deadbeef"
    assert [m.key for m in list_members(secret)] == [m.key for m in list_members(train_zip)]
    record = fingerprint(secret)
    assert record["path"] == url.replace("http://", "http://reader@") and record["name"] == train_zip.name
    with pytest.raises(SourceError) as error:
        SourceReader(secret).read_bytes("Train/p9/aug9.pt")
    assert "hunter2" not in str(error.value) and "deadbeef" not in str(error.value)


#: The header a private HTTP store wants (:class:`TokenOnly`); only storage options hold it.
TOKEN = "Bearer only-in-the-storage-options"


class TokenOnly(RangeHandler):
    """Answers only requests carrying :data:`TOKEN`, as a private HTTP store does; refuses others with 403."""

    def _answer(self, body: bool) -> None:
        if self.headers.get("Authorization") != TOKEN:
            self._log(None, None, 403, 0)
            self.send_error(403)
            return
        super()._answer(body)


def test_storage_options_reach_every_read_of_a_source_at_a_url(tmp_path, serve, dask_scheduler, capsys):
    """The archive's server answers only with a header that only the ``http`` section of the storage
    options holds: listing, fingerprinting, calibration, the conversion's tasks on the Dask workers,
    ``verify``'s and ``scan`` all send it; the ``s3`` section beside it never reaches the HTTP
    requests (fsspec would hand it on to aiohttp, which refuses it)."""
    archive = write_archive(tmp_path / "src" / "SSMSpine_Train.zip", SynthConfig(patients=1, shapes=2))
    server = serve(archive.parent, TokenOnly)
    url = server.url + archive.name
    options = {"http": {"headers": {"Authorization": TOKEN}}, "s3": {"endpoint_url": "http://127.0.0.1:9"}}
    out = tmp_path / "out"
    with pytest.raises(SourceError, match=r"access denied \(HTTP 403"):
        convert([url], out, fast_options(dask_scheduler))
    fixed = dict.fromkeys(FIELDS, Encoding("zstd", 1))  # not measured: seconds saved
    summary = convert([url], out, fast_options(dask_scheduler, encodings=fixed, storage_options=options))
    assert summary.samples == 2 and summary.shards_written == 2, "two tasks, each read its member on a worker"
    assert verify(out, [url], scheduler=dask_scheduler, storage_options=options).ok
    file = tmp_path / "options.json"
    file.write_text(json.dumps(options))
    args = ["verify", url, "--out", str(out), "--scheduler", dask_scheduler, "--no-progress"]
    assert main([*args, "--storage-options", str(file)]) == 0
    capsys.readouterr()
    assert main(["scan", url, "--json", "--storage-options", str(file)]) == 0
    found = json.loads(capsys.readouterr().out)["sources"][0]
    assert found["samples"] == 2 and found["sample"]["member"] == "Train/p1/aug1.pt"
    assert main(["scan", url, "--json"]) == 2 and "access denied" in capsys.readouterr().out
