"""``ssmspine scan``: what sources hold, told from their central directories and one member each.

Small archives made by zipfile, Info-ZIP and 7-Zip (tiny samples: 8x8 images), some damaged by
hand, scanned through the library and the command; at a URL, the requests served are counted.
"""

from __future__ import annotations

import json
import struct
import subprocess
import zipfile
from pathlib import Path

import pytest
from test_damaged_archives import (
    MEMBERS,
    RELEASE_STYLE,
    VICTIM,
    central_entry,
    patch,
    tiny_members,
    tiny_sample,
    tiny_zip,
    zip64_archive,
)

from pipeline.cli import main
from pipeline.schema import spec_of
from pipeline.source.zip_local import LOCAL_HEADER_MARGIN
from pipeline.tools.scan import format_scan, scan
from pipeline.tools.synth import MEMBER_DATE_TIME, pt_bytes

PASSWORD = "sc4n me: #1 with spaces"


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["scan", *args])
    printed = capsys.readouterr()
    return code, printed.out, printed.err


def _mixed_zip(path: Path) -> Path:
    """Two patients (p2 lacks aug2) in three methods, junk, a name outside the layout and a key given twice."""
    entries = [(name, data, zipfile.ZIP_DEFLATED) for name, data in tiny_members().items()]
    entries += [
        ("Train/p2/aug1.pt", pt_bytes(tiny_sample(2, 1), RELEASE_STYLE), zipfile.ZIP_STORED),
        ("Train/p2/aug3.pt", pt_bytes(tiny_sample(2, 3), RELEASE_STYLE), zipfile.ZIP_BZIP2),
        ("__MACOSX/Train/p1/._aug1.pt", b"\x00\x05\x16\x07 AppleDouble", zipfile.ZIP_STORED),
        ("Train/.DS_Store", b"\x00\x00\x00\x01Bud1", zipfile.ZIP_STORED),
        ("Train/p1/notes.pt", b"not a sample", zipfile.ZIP_STORED),
        ("Copy/Train/p1/aug1.pt", b"the same key again", zipfile.ZIP_STORED),
    ]
    with zipfile.ZipFile(path, "w") as archive:
        for name, data, method in entries:
            info = zipfile.ZipInfo(name, date_time=MEMBER_DATE_TIME)
            info.compress_type = method
            archive.writestr(info, data)
    return path


def test_a_zip_is_counted_by_split_patient_shape_method_and_encryption(tmp_path, capsys):
    archive = _mixed_zip(tmp_path / "SSMSpine_Train.zip")
    found = scan([str(archive)]).sources[0]
    assert found.ok and found.kind == "zip" and found.size == archive.stat().st_size
    [train] = found.splits
    assert train.name == "train" and train.samples == found.samples == 5
    assert [(p.patient, p.augs, p.missing) for p in train.patients] == [(1, (1, 2, 3), ()), (2, (1, 3), (2,))]
    directory = found.directory
    assert directory.entries == 9 and directory.methods == {"stored": 5, "deflate": 3, "bzip2": 1}
    assert (directory.encryption.none, directory.encryption.encrypted) == (9, 0)
    assert not directory.zip64.used and directory.damaged.count == 0
    assert found.junk.count == 2 and {p.member for p in found.junk.first} == {
        "__MACOSX/Train/p1/._aug1.pt",
        "Train/.DS_Store",
    }
    assert [p.member for p in found.outside.first] == ["Train/p1/notes.pt"] and found.outside.count == 1
    assert [p.member for p in found.duplicates.first] == ["Copy/Train/p1/aug1.pt"]
    assert found.unlock.state == "not encrypted"
    assert found.sample.member == MEMBERS[0] and found.sample.problem is None
    assert dict(found.sample.fields) == {f: spec_of(a) for f, a in tiny_sample(1, 1).items()}

    code, out, err = _run(capsys, str(archive), "--json")
    assert code == 0 and not err and json.loads(out) == scan([str(archive)]).to_json()
    code, text, err = _run(capsys, str(archive))
    assert code == 0 and not err and text == format_scan(scan([str(archive)])) + "\n"
    lines = [line.strip() for line in text.splitlines()]
    assert f"{archive} (zip, {archive.stat().st_size / 1000:.1f} KB): OK" in lines
    assert "p1: 3 shapes (aug1-aug3)" in lines and "p2: 2 shapes (aug1, aug3; missing aug2)" in lines
    assert "entries: 9; compression: stored 5, deflate 3, bzip2 1" in lines
    assert "encryption: none" in lines and "zip64: no" in lines and "junk (skipped): 2" in lines
    assert "damaged directory entries: none" in lines and "Train/p1/notes.pt: a .pt file outside" in text
    assert lines[-1] == "scan: OK (1 source)"
    assert any(line.split() == ["mask", "11×8×8", "|u1", "README:", "11×512×512"] for line in lines)


def test_an_extracted_tree_is_counted_as_its_zip_is(tmp_path):
    archive = tiny_zip(tmp_path / "SSMSpine_Train.zip")
    tree = tmp_path / "tree"
    with zipfile.ZipFile(archive) as z:
        z.extractall(tree)
    (tree / "Train" / ".DS_Store").write_bytes(b"junk")
    zipped, extracted = scan([archive, tree]).sources
    assert extracted.kind == "directory" and extracted.directory is None and extracted.unlock is None
    assert extracted.splits == zipped.splits and extracted.junk.count == 1
    assert extracted.sample == zipped.sample and extracted.sample.member == MEMBERS[0]


@pytest.mark.parametrize("layout", ["plain", "zip64", "zip64 and a comment"])
def test_zip64_is_told_from_the_end_records_and_the_entries(tmp_path, monkeypatch, layout):
    """A comment after the end record moves it away from the archive's end: the record is the
    signature whose comment length reaches the end."""
    if layout == "plain":
        archive = tiny_zip(tmp_path / "SSMSpine_Train.zip")
    else:
        archive = zip64_archive(tmp_path / "SSMSpine_Train.zip", "everywhere", zipfile.ZIP_DEFLATED, monkeypatch)
    if layout == "zip64 and a comment":
        comment = b"made on a Mac, " + bytes(300)  # (zipfile itself takes a signature in a comment for the record)
        data = archive.read_bytes()
        assert data[-22:-18] == b"PK\x05\x06" and data[-2:] == b"\0\0", "an end record without a comment"
        archive.write_bytes(data[:-2] + struct.pack("<H", len(comment)) + comment)
        assert zipfile.ZipFile(archive).comment == comment
    zip64 = scan([archive]).sources[0].directory.zip64
    expected = (False, False, 0) if layout == "plain" else (True, True, len(MEMBERS))
    assert (zip64.used, zip64.end_records, zip64.entries) == expected


def _offset_beyond_the_end(path: Path) -> None:
    data = bytearray(path.read_bytes())
    struct.pack_into("<L", data, central_entry(bytes(data), VICTIM) + 42, len(data) + 100)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda p: patch(p, VICTIM, "central", method=6), "uses the compression imploded, which is not supported"),
        (lambda p: patch(p, VICTIM, "central", method=99), "is WinZip AES (method 99) without a valid 0x9901 extra"),
        (lambda p: patch(p, VICTIM, "central", flags=0x41), "uses PKWARE strong encryption"),
        (lambda p: patch(p, VICTIM, "central", file_size=0xFFFFFFF0), "declares 4294967280 bytes, far more than"),
        (_offset_beyond_the_end, "its local header offset"),
    ],
    ids=["method", "aes-extra", "strong", "size", "offset"],
)
def test_a_damaged_directory_entry_is_listed_and_the_rest_scanned(tmp_path, capsys, damage, reason):
    archive = tiny_zip(tmp_path / "SSMSpine_Train.zip")
    damage(archive)
    found = scan([archive]).sources[0]
    assert found.ok and found.samples == len(MEMBERS), "damaged entries are reported, not fatal"
    assert found.directory.damaged.count == 1 and found.directory.damaged.first[0].member == VICTIM
    assert found.directory.damaged.first[0].reason.startswith(reason)
    assert found.sample.member == MEMBERS[0] and found.sample.fields
    code, out, _ = _run(capsys, str(archive))
    assert code == 0 and "  damaged directory entries: 1\n" in out and f"    {VICTIM}: {reason}" in out


def _zip_tree(tree: Path, archive: Path, tool: str) -> Path:
    """``tree`` packed by an independent tool: Info-ZIP (ZipCrypto) or 7-Zip (AES-256)."""
    archive.parent.mkdir(parents=True)
    if tool == "info-zip":
        command = ["zip", "-q", "-r", "-P", PASSWORD, str(archive), "Train"]
    else:
        command = ["7z", "a", "-tzip", "-bd", "-bso0", "-mem=AES256", f"-p{PASSWORD}", str(archive), "Train"]
    subprocess.run(command, cwd=tree, check=True)
    return archive


@pytest.fixture(scope="module")
def encrypted(tmp_path_factory) -> dict[str, Path]:
    """The tiny tree zipped with a password by Info-ZIP and by 7-Zip, and the two password files."""
    base = tmp_path_factory.mktemp("encrypted")
    for name, data in tiny_members().items():
        (base / "tree" / name).parent.mkdir(parents=True, exist_ok=True)
        (base / "tree" / name).write_bytes(data)
    (base / "right.txt").write_text(PASSWORD + "\n")
    (base / "wrong.txt").write_text("not " + PASSWORD + "\n")
    return {
        "info-zip": _zip_tree(base / "tree", base / "zipcrypto" / "SSMSpine_Train.zip", "info-zip"),
        "7z": _zip_tree(base / "tree", base / "aes" / "SSMSpine_Train.zip", "7z"),
        "right": base / "right.txt",
        "wrong": base / "wrong.txt",
    }


@pytest.mark.parametrize("given", ["right", "wrong", "none"])
@pytest.mark.parametrize("tool", ["info-zip", "7z"])
def test_a_password_is_checked_on_a_member_and_never_shown(encrypted, capsys, tool, given):
    archive = str(encrypted[tool])
    option = [] if given == "none" else ["--password-file", str(encrypted[given])]
    code, out, err = _run(capsys, archive, "--json", *option)
    text_code, text, text_err = _run(capsys, archive, *option)
    assert PASSWORD not in out + err + text + text_err and "sc4n" not in out + text
    assert code == text_code == (2 if given == "wrong" else 0)
    found = json.loads(out)["sources"][0]
    encryption = found["zip"]["encryption"]
    assert (
        encryption == {"none": 0, "zipcrypto": 3, "aes": 0, "strong": 0}
        if tool == "info-zip"
        else encryption["aes"] == 3
    )
    if tool == "7z":
        assert all("in WinZip AES-256 (AE-" in method for method in found["zip"]["methods"])
    state = {"right": "opens", "wrong": "refused", "none": "no password"}[given]
    assert found["password"]["state"] == state and found["ok"] == (given != "wrong")
    if given == "right":
        assert found["sample"]["member"] in MEMBERS and found["sample"]["fields"]["img"]["shape"] == [8, 8]
        assert f"password: the password given opens it (checked on {found['password']['member']})" in text
    elif given == "wrong":
        assert found["sample"]["member"] is None and "password given does NOT open it (tried on" in text
        assert "NOT OK: the password given does not open it" in text and "scan: 1 of 1 source NOT OK" in text
    else:
        assert "password: encrypted; give a password to check it (--password-file FILE or $SSMSPINE" in text
        assert "sample: none read (encrypted; give a password to read one)" in text


def test_a_zip_at_a_url_costs_its_directory_and_one_member(tmp_path, serve, monkeypatch):
    """The tail read on opening is made small, so that every member of this small archive lies outside it."""
    from pipeline.source import remote

    archive = zip64_archive(tmp_path / "SSMSpine_Train.zip", "everywhere", zipfile.ZIP_DEFLATED, monkeypatch)
    monkeypatch.setattr(remote, "TAIL_BYTES", 1024)
    with zipfile.ZipFile(archive) as z:
        assert min(info.header_offset + info.compress_size for info in z.infolist()) < archive.stat().st_size - 1024
    server = serve(tmp_path)
    url = server.url + archive.name
    remote, local = scan([url, archive]).sources
    assert remote.ok and remote.source == url and remote.directory.zip64.end_records
    assert {**remote.to_json(), "source": str(archive)} == local.to_json()
    size = archive.stat().st_size
    gets = [r for r in server.requests if r.method == "GET"]
    assert gets and all(r.start is not None for r in gets), "a GET without Range downloads the whole archive"
    tails = [r for r in gets if r.end == size - 1]
    members = [r for r in gets if r.end != size - 1]
    assert len(tails) == 2, "one opening to scan the directory, one to read the sample"
    with zipfile.ZipFile(archive) as z:
        info = z.getinfo(remote.sample.member)
    assert len(members) == 1 and members[0].start == info.header_offset
    assert members[0].body_bytes <= 30 + len(info.filename) + len(info.extra) + LOCAL_HEADER_MARGIN + info.compress_size


def test_a_source_that_cannot_be_scanned_is_one_line_and_the_others_are_scanned(tmp_path, capsys):
    good = tiny_zip(tmp_path / "SSMSpine_Train.zip")
    not_zip = tmp_path / "SSMSpine_Test.zip"
    not_zip.write_bytes(b"this is no zip archive" * 10)
    (tmp_path / "empty").mkdir()
    sources = [str(tmp_path / "missing.zip"), str(not_zip), str(tmp_path / "empty"), str(good)]
    code, out, err = _run(capsys, *sources)
    assert code == 2 and not err, "no traceback, no error line: each source has its verdict"
    assert f"{tmp_path / 'missing.zip'}: NOT OK: cannot be scanned: no such file or directory" in out
    assert f"{not_zip}: NOT OK: cannot be scanned: not a readable zip archive or directory" in out
    assert f"{tmp_path / 'empty'} (extracted directory, 0 B): NOT OK: holds no" in out
    assert f"{good} (zip, " in out and out.rstrip().endswith("scan: 3 of 4 sources NOT OK")
    code, out, _ = _run(capsys, *sources, "--json")
    assert code == 2 and [s["ok"] for s in json.loads(out)["sources"]] == [False, False, False, True]
