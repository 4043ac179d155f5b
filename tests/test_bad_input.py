"""Bad input: clear errors naming archive, member and reason; ``--skip-bad`` converts the rest.

Each case builds a small archive of good samples plus one bad member. By default the
conversion stops with a :class:`SourceError` and leaves nothing that looks complete; with
``skip_bad`` every other sample is converted, the bad member is listed in ``rejected.json``,
and the output verifies.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.convert import convert
from pipeline.errors import SchemaError, SourceError
from pipeline.source import zip_reader
from pipeline.store.manifest import read_manifest
from pipeline.tools.synth import SynthConfig, cast_sample, make_sample, pt_bytes, write_archive
from pipeline.verify import verify

from conftest import fast_options

GOOD = SynthConfig(patients=1, shapes=3, seed=3)


def _with_member(tmp_path: Path, name: str, data: bytes, config: SynthConfig = GOOD) -> Path:
    archive = write_archive(tmp_path / "SSMSpine_Train.zip", config)
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr(name, data)
    return archive


def _sample_bytes(**changes) -> bytes:
    sample = {**cast_sample(make_sample(1, 9, seed=3), GOOD), **changes}
    return pt_bytes({k: v for k, v in sample.items() if v is not None}, GOOD)


class _Payload:
    """Unpickling this would create a directory: the canary for code execution."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def _malicious(canary: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"img": _Payload(str(canary))}, buffer)
    return buffer.getvalue()


BAD_MEMBERS = {
    "empty": (lambda tmp: b"", "is empty"),
    "not-torch": (lambda tmp: b"GIF89a, not a torch file", "is not a torch file"),
    "truncated": (lambda tmp: _sample_bytes()[:5000], "is not a readable torch file"),
    "runs-code": (lambda tmp: _malicious(tmp / "pwned"), "refused: the pickle asks for globals"),
    "missing-key": (lambda tmp: _sample_bytes(bone=None), r"missing key\(s\) \['bone'\]"),
    "extra-key": (lambda tmp: _sample_bytes(extra=np.zeros(3)), r"unexpected key\(s\) \['extra'\]"),
    "other-shape": (
        lambda tmp: _sample_bytes(img=np.zeros((256, 256), np.float32)),
        "field 'img' is <f4 \\(256, 256\\)",
    ),
    "other-dtype": (lambda tmp: _sample_bytes(mask=np.zeros((11, 512, 512), bool)), "field 'mask' is \\|b1"),
}


@pytest.mark.parametrize("case", sorted(BAD_MEMBERS))
def test_a_bad_member_stops_the_conversion_naming_it(case, tmp_path, dask_scheduler):
    make, reason = BAD_MEMBERS[case]
    archive = _with_member(tmp_path, "Train/p1/aug9.pt", make(tmp_path))
    out = tmp_path / "out"
    with pytest.raises(SourceError, match=rf"SSMSpine_Train\.zip: Train/p1/aug9\.pt: {reason}"):
        convert([archive], out, fast_options(dask_scheduler, shard_bytes=1))
    assert not (out / "manifest.json").exists()
    assert not list(out.rglob("*.tmp-*")), "the failed task left no partial files"
    assert not (tmp_path / "pwned").exists(), "the pickle's payload never ran"


@pytest.mark.parametrize("case", sorted(BAD_MEMBERS))
def test_skip_bad_converts_the_rest_and_lists_the_member(case, tmp_path, dask_scheduler):
    make, reason = BAD_MEMBERS[case]
    archive = _with_member(tmp_path, "Train/p1/aug9.pt", make(tmp_path))
    out = tmp_path / "out"
    summary = convert([archive], out, fast_options(dask_scheduler, skip_bad=True))
    assert summary.samples == 3 and [r.member for r in summary.rejected] == ["Train/p1/aug9.pt"]
    rejected = json.loads((out / "rejected.json").read_text())
    assert rejected[0]["key"] == "p01_aug009" and rejected[0]["archive"] == str(archive)
    assert re.search(reason, rejected[0]["reason"])
    assert read_manifest(out).splits["train"].keys == ["p01_aug001", "p01_aug002", "p01_aug003"]
    assert verify(out, [archive], scheduler=dask_scheduler).ok
    assert verify(out, scheduler=dask_scheduler).ok
    assert not (tmp_path / "pwned").exists()


def test_a_rejected_member_in_the_middle_leaves_an_empty_row_that_no_key_points_at(tmp_path, dask_scheduler):
    from pipeline.read.zarr_dataset import ZarrDataset

    archive = _with_member(tmp_path, "Train/p1/aug0.pt", b"")  # sorts first: row 0
    out = tmp_path / "out"
    convert([archive], out, fast_options(dask_scheduler, skip_bad=True))
    done = read_manifest(out).splits["train"]
    assert done.keys == ["p01_aug001", "p01_aug002", "p01_aug003"] and done.rows == [1, 2, 3]
    dataset = ZarrDataset(out, "train", ("img",))
    assert len(dataset) == 3 and dataset[0]["__key__"] == "p01_aug001"
    np.testing.assert_array_equal(dataset[0]["img"].numpy(), make_sample(1, 1, seed=3)["img"])
    assert verify(out, [archive], scheduler=dask_scheduler).ok


def _corrupt_stored_member(archive: Path, member: str) -> None:
    with zipfile.ZipFile(archive) as z:
        info = z.getinfo(member)
    data = bytearray(archive.read_bytes())
    name_and_extra = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + sum(name_and_extra)
    data[start + info.compress_size // 2] ^= 0x55
    archive.write_bytes(bytes(data))


def test_a_member_whose_crc_does_not_match_is_named(tmp_path, dask_scheduler):
    archive = write_archive(tmp_path / "a.zip", SynthConfig(patients=1, shapes=2, compression="stored"))
    _corrupt_stored_member(archive, "Train/p1/aug2.pt")
    with pytest.raises(SourceError, match=r"a\.zip: Train/p1/aug2\.pt: CRC-32 mismatch"):
        convert([archive], tmp_path / "out", fast_options(dask_scheduler))


def test_a_truncated_zip_is_named(tmp_path, dask_scheduler):
    archive = write_archive(tmp_path / "a.zip", SynthConfig(patients=1, shapes=2))
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(SourceError, match=r"a\.zip: not a readable zip archive"):
        convert([archive], tmp_path / "out", fast_options(dask_scheduler))
    assert not (tmp_path / "out").exists(), "nothing is created for input that cannot even be listed"


def _patch_declared_size(archive: Path, member: str, size: int) -> None:
    """Make ``member`` declare ``size`` uncompressed bytes in both its headers (a zip bomb's lie)."""
    with zipfile.ZipFile(archive) as z:
        info = z.getinfo(member)
    data = bytearray(archive.read_bytes())
    struct.pack_into("<L", data, info.header_offset + 22, size)
    central = data.find(b"PK\x01\x02" + data[info.header_offset + 4 : info.header_offset + 6])
    while data[central + 46 : central + 46 + len(member)] != member.encode():
        central = data.find(b"PK\x01\x02", central + 4)
    struct.pack_into("<L", data, central + 24, size)
    archive.write_bytes(bytes(data))


def test_a_member_that_inflates_beyond_what_it_declares_is_refused(tmp_path):
    archive = write_archive(tmp_path / "a.zip", SynthConfig(patients=1, shapes=1))
    _patch_declared_size(archive, "Train/p1/aug1.pt", 1000)
    with (
        zip_reader.SourceReader(str(archive)) as reader,
        pytest.raises(
            SourceError, match=r"a\.zip: Train/p1/aug1\.pt: inflates to more than the 1000 bytes it declares"
        ),
    ):
        reader.read_bytes("Train/p1/aug1.pt")


def test_a_member_that_declares_far_more_than_a_sample_is_refused_unread(tmp_path, monkeypatch):
    archive = write_archive(tmp_path / "a.zip", SynthConfig(patients=1, shapes=1))
    monkeypatch.setattr(zip_reader, "MAX_MEMBER_BYTES", 1 << 20)  # a real sample is ~12 MB: "too big" here
    with zip_reader.SourceReader(str(archive)) as reader, pytest.raises(SourceError, match="far more than a sample"):
        reader.read_bytes("Train/p1/aug1.pt")


def test_content_anomalies_are_kept_and_reported_as_warnings(tmp_path, dask_scheduler):
    image = cast_sample(make_sample(1, 9, seed=3), GOOD)["img"].copy()
    image[0, :3] = [np.nan, np.inf, 1.5]
    label = cast_sample(make_sample(1, 9, seed=3), GOOD)["label"].copy()
    label[0, 0, 0] = 12
    archive = _with_member(tmp_path, "Train/p1/aug9.pt", _sample_bytes(img=image, label=label))
    out = tmp_path / "out"
    summary = convert([archive], out, fast_options(dask_scheduler))
    assert summary.samples == 4 and not summary.rejected
    found = read_manifest(out).splits["train"].warnings["p01_aug009"]
    assert any("NaN/Inf" in w for w in found) and any("outside [0, 1]" in w for w in found)
    assert any("label has values outside the integers 0..11" in w for w in found)
    assert verify(out, [archive], scheduler=dask_scheduler).ok, "converted bit for bit, NaNs included"


ODD_NAMES = {
    "dot-dot": ("../../evil/Train/p5/aug1.pt", "p05_aug001"),
    "absolute": ("/abs/Train/p6/aug1.pt", "p06_aug001"),
}


def test_odd_member_names_give_safe_keys_and_write_nothing_outside_out(tmp_path, dask_scheduler):
    archive = write_archive(tmp_path / "src" / "SSMSpine_Train.zip", GOOD)
    with zipfile.ZipFile(archive, "a") as z:
        for name, _ in ODD_NAMES.values():
            z.writestr(name, _sample_bytes())
    out = tmp_path / "work" / "out"
    convert([archive], out, fast_options(dask_scheduler))
    keys = read_manifest(out).splits["train"].keys
    assert {key for _, key in ODD_NAMES.values()} <= set(keys)
    assert all(k.replace("_", "").isalnum() and k.isascii() for k in keys)
    outside = [p for p in tmp_path.rglob("*") if out not in p.parents and p != out and p.is_file()]
    assert sorted(p.name for p in outside) == ["SSMSpine_Train.zip"]


def test_a_root_that_gives_no_safe_split_name_is_refused_or_rejected(tmp_path, dask_scheduler):
    archive = _with_member(tmp_path, "Träin/p1/aug1.pt", _sample_bytes())
    with pytest.raises(SourceError, match=r"Träin/p1/aug1\.pt: the root folder 'Träin' gives no safe split name"):
        convert([archive], tmp_path / "out", fast_options(dask_scheduler))
    summary = convert([archive], tmp_path / "out", fast_options(dask_scheduler, skip_bad=True))
    assert summary.splits == {"train": 3} and len(summary.rejected) == 1


def test_duplicate_keys_across_archives_are_refused_or_rejected(tmp_path, dask_scheduler):
    first = write_archive(tmp_path / "a" / "SSMSpine_Train.zip", GOOD)
    second = write_archive(tmp_path / "b" / "Train_again.zip", SynthConfig(patients=1, shapes=4, seed=3))
    with pytest.raises(SourceError, match=r"Train_again\.zip: Train/p1/aug1\.pt: sample p01_aug001 .* also comes from"):
        convert([first, second], tmp_path / "out", fast_options(dask_scheduler))
    summary = convert([first, second], tmp_path / "out", fast_options(dask_scheduler, skip_bad=True))
    assert summary.samples == 4 and len(summary.rejected) == 3
    assert verify(tmp_path / "out", [first, second], scheduler=dask_scheduler).ok


def test_schema_error_is_a_source_error_with_archive_and_member():
    error = SchemaError("a.zip", "Train/p1/aug1.pt", "field 'img' is ...")
    assert isinstance(error, SourceError) and str(error).startswith("a.zip: Train/p1/aug1.pt: ")


def test_a_first_split_of_bad_members_only_does_not_stop_skip_bad(tmp_path, dask_scheduler):
    """Calibration takes the first member that decodes in any split, not only in the first one."""
    archive = _with_member(tmp_path, "Aaa/p1/aug1.pt", b"")  # split "aaa" sorts before "train"
    with pytest.raises(SourceError, match=r"Aaa/p1/aug1\.pt: is empty"):
        convert([archive], tmp_path / "out", fast_options(dask_scheduler))
    out = tmp_path / "skipped"
    summary = convert([archive], out, fast_options(dask_scheduler, skip_bad=True))
    assert summary.splits["train"] == 3 and [r.member for r in summary.rejected] == ["Aaa/p1/aug1.pt"]
    assert verify(out, [archive], scheduler=dask_scheduler).ok
