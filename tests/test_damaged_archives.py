"""Damaged and unusual zip archives: every failure reading a member is a ``SourceError``.

The release is a 20 GB download; a flipped bit or a cut transfer must end in one line naming
archive and member (or, with ``--skip-bad``, in ``rejected.json``), never in a traceback.
The fast member reader (zlib-ng, not zipfile) must check what zipfile checks and more, and it
must read zip64 archives (the release is larger than 4 GB) bit for bit.

The archives here hold tiny samples (8x8 images): every field is there with the release's
dtypes, only smaller, which the schema accepts with a warning. That keeps each conversion fast.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_source import _Payload, legacy_pt_bytes

from pipeline.cli import main
from pipeline.convert import convert
from pipeline.errors import SourceError
from pipeline.read.zarr_dataset import ZarrDataset
from pipeline.source.members import fingerprint, is_junk, list_members
from pipeline.source.zip_reader import SourceReader
from pipeline.store.manifest import read_manifest
from pipeline.tools.synth import MEMBER_DATE_TIME, SynthConfig, pt_bytes
from pipeline.verify import verify

from conftest import fast_options

#: numpy 1.x pickles and numpy values, as in the release.
RELEASE_STYLE = SynthConfig()
MEMBERS = [f"Train/p1/aug{aug}.pt" for aug in (1, 2, 3)]
VICTIM = MEMBERS[1]  # the member we damage: neither the first nor the last

# Offsets of fields in a local file header and a central directory entry (APPNOTE 4.3.7, 4.3.12).
LOCAL = {"signature": 0, "flags": 6, "method": 8, "crc": 14, "compress_size": 18, "file_size": 22, "name": 30}
CENTRAL = {
    "signature": 0,
    "version_needed": 6,
    "flags": 8,
    "method": 10,
    "crc": 16,
    "compress_size": 20,
    "file_size": 24,
    "name": 46,
}
#: What the fast reader says about compressed data that was altered: one of these, whichever comes first.
DAMAGED_DATA = "not a valid deflate stream|CRC-32 mismatch|cut short|does not end|inflates to (more|only)"
FIELD_FORMAT = {"flags": "<H", "method": "<H", "crc": "<L", "compress_size": "<L", "file_size": "<L"}


def tiny_sample(patient: int, aug: int) -> dict[str, np.ndarray]:
    """All ten fields in the release's dtypes, with 8x8 images and 4-point contours."""
    rng = np.random.default_rng(1000 * patient + aug)
    image = rng.random((8, 8), dtype=np.float32)
    return {
        "img": image,
        "img_corrected": (image * np.float32(0.9)).astype(np.float32),
        "img_equalized": (np.round(image * 255) / 255).astype(np.float32),
        "label": rng.integers(0, 12, (1, 8, 8), dtype=np.int64),
        "mask": rng.integers(0, 2, (11, 8, 8), dtype=np.uint8),
        "shape": rng.random((12, 2)) * 8,
        "bone": rng.random((6, 4, 2)) * 8,
        "bone_mask": rng.integers(0, 2, (6, 8, 8), dtype=np.uint8),
        "disk": rng.random((5, 4, 2)) * 8,
        "disk_mask": rng.integers(0, 2, (5, 8, 8), dtype=np.uint8),
    }


def tiny_members() -> dict[str, bytes]:
    return {name: pt_bytes(tiny_sample(1, aug), RELEASE_STYLE) for aug, name in enumerate(MEMBERS, start=1)}


def write_zip(
    path: Path, members: Mapping[str, bytes], compression: int = zipfile.ZIP_DEFLATED, force_zip64: bool = False
) -> Path:
    """A zip of ``members`` as zipfile writes it (``force_zip64``: zip64 extra fields in the local headers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=MEMBER_DATE_TIME)
            info.compress_type = compression
            if force_zip64:
                with archive.open(info, "w", force_zip64=True) as file:
                    file.write(data)
            else:  # writestr knows the size up front, so zipfile's ZIP64_LIMIT decides
                archive.writestr(info, data)
    return path


def tiny_zip(path: Path, **options) -> Path:
    return write_zip(path, tiny_members(), **options)


def local_header(data: bytes, name: str) -> int:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return archive.getinfo(name).header_offset


def data_span(path: Path, name: str) -> tuple[int, int]:
    """(start, length) of a member's compressed bytes, found through its local header."""
    data = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(name)
    name_length, extra_length = struct.unpack_from("<HH", data, info.header_offset + 26)
    return info.header_offset + 30 + name_length + extra_length, info.compress_size


def central_entry(data: bytes, name: str) -> int:
    """Offset of ``name``'s central directory entry."""
    at = data.find(b"PK\x01\x02")
    while data[at + 46 : at + 46 + len(name)] != name.encode():
        at = data.find(b"PK\x01\x02", at + 4)
        assert at >= 0, f"no central directory entry for {name}"
    return at


def patch(path: Path, name: str, where: str, **fields: int) -> None:
    """Set fields of ``name``'s local header (``where="local"``), central entry, or both."""
    data = bytearray(path.read_bytes())
    starts = {"local": local_header(bytes(data), name), "central": central_entry(bytes(data), name)}
    for header in ("local", "central") if where == "both" else (where,):
        offsets = LOCAL if header == "local" else CENTRAL
        for field, value in fields.items():
            fmt = FIELD_FORMAT.get(field, "<H")
            struct.pack_into(fmt, data, starts[header] + offsets[field], value)
    path.write_bytes(bytes(data))


def write_raw(
    path: Path, raw: bytes, *, method: int, crc: int, file_size: int, compress_size: int | None = None
) -> Path:
    """The tiny archive with ``VICTIM``'s compressed bytes replaced by ``raw``, declared as given.

    The member is written stored (so zipfile puts ``raw`` in place as it is and every offset
    stays right), then both its headers are made to claim ``method``, ``crc`` and the sizes.
    """
    members = tiny_members()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=MEMBER_DATE_TIME)
            info.compress_type = zipfile.ZIP_STORED if name == VICTIM else zipfile.ZIP_DEFLATED
            archive.writestr(info, raw if name == VICTIM else data)
    declared = len(raw) if compress_size is None else compress_size
    patch(path, VICTIM, "both", method=method, crc=crc, file_size=file_size, compress_size=declared)
    return path


def deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


def read_victim(path: Path) -> bytes:
    with SourceReader(str(path)) as reader:
        return reader.read_bytes(VICTIM)


# ------------------------------------------------------------------------------------------
# The fast member reader: damaged compressed data
# ------------------------------------------------------------------------------------------


def test_an_invalid_deflate_stream_is_named_not_a_raw_zlib_ng_error(tmp_path):
    archive = tiny_zip(tmp_path / "a.zip")
    start, length = data_span(archive, VICTIM)
    data = bytearray(archive.read_bytes())
    data[start : start + length] = b"\xff" * length  # block type 3: reserved, invalid in every stream
    archive.write_bytes(bytes(data))
    with pytest.raises(
        SourceError,
        match=r"a\.zip: Train/p1/aug2\.pt: its compressed data is not a valid deflate "
        r"stream \(.*invalid block type",
    ):
        read_victim(archive)


@pytest.mark.parametrize("where", [0.0, 0.2, 0.4, 0.6, 0.8])
def test_altered_compressed_bytes_are_named(tmp_path, where):
    archive = tiny_zip(tmp_path / "a.zip")
    start, length = data_span(archive, VICTIM)
    data = bytearray(archive.read_bytes())
    data[start + int(where * length)] ^= 0x5A
    archive.write_bytes(bytes(data))
    with pytest.raises(SourceError, match=rf"a\.zip: Train/p1/aug2\.pt: .*({DAMAGED_DATA})"):
        read_victim(archive)


def test_data_shorter_than_the_directory_claims_is_named(tmp_path):
    """The member's compressed bytes stop early; the directory (intact, the zip opens) claims more,
    so reading them runs on into the next member's local header."""
    original = tiny_members()[VICTIM]
    stream = deflate(original)
    archive = write_raw(
        tmp_path / "a.zip",
        stream[: len(stream) // 2],
        method=zipfile.ZIP_DEFLATED,
        crc=zlib.crc32(original),
        file_size=len(original),
        compress_size=len(stream),
    )
    assert len(list_members(archive)) == 3, "the central directory is intact"
    with pytest.raises(SourceError, match=rf"a\.zip: Train/p1/aug2\.pt: .*({DAMAGED_DATA})"):
        read_victim(archive)


def cut_member_data(path: Path, name: str, cut: int) -> None:
    """Remove the last ``cut`` bytes of ``name``'s data and move what follows up, repairing the
    directory's offsets but keeping its sizes: the zip opens, and the member's data is short."""
    data = path.read_bytes()
    start, length = data_span(path, name)
    end = start + length
    with zipfile.ZipFile(path) as archive:
        infos, directory = archive.infolist(), archive.start_dir
    shortened = bytearray(data[: end - cut] + data[end:])
    for info in infos:
        if info.header_offset > start:
            at = central_entry(data, info.filename) - cut
            struct.pack_into("<L", shortened, at + 42, info.header_offset - cut)
    struct.pack_into("<L", shortened, len(shortened) - 22 + 16, directory - cut)  # the end record's directory offset
    path.write_bytes(bytes(shortened))


@pytest.mark.parametrize("victim", [MEMBERS[1], MEMBERS[2]], ids=["then the next member", "then the directory"])
def test_member_data_cut_with_the_directory_repaired_is_named(tmp_path, victim):
    archive = tiny_zip(tmp_path / "a.zip")
    cut_member_data(archive, victim, 25)
    expected = tiny_members()
    with SourceReader(str(archive)) as reader:
        with pytest.raises(SourceError, match=rf"a\.zip: {re.escape(victim)}: .*({DAMAGED_DATA})"):
            reader.read_bytes(victim)
        for name in MEMBERS:  # the directory was repaired right: every other member reads
            if name != victim:
                assert reader.read_bytes(name) == expected[name]


def test_a_deflate_stream_cut_short_is_named(tmp_path):
    """Headers agree on a size the stream cannot give: it ends in the middle of a block."""
    original = tiny_members()[VICTIM]
    stream = deflate(original)
    archive = write_raw(
        tmp_path / "a.zip",
        stream[: len(stream) - 20],
        method=zipfile.ZIP_DEFLATED,
        crc=zlib.crc32(original),
        file_size=len(original),
    )
    with pytest.raises(SourceError, match=r"a\.zip: Train/p1/aug2\.pt: its deflate stream is cut short"):
        read_victim(archive)


def test_a_stream_that_inflates_to_fewer_bytes_than_declared_is_named(tmp_path):
    """A complete deflate stream, but of the first half of the member only."""
    original = tiny_members()[VICTIM]
    archive = write_raw(
        tmp_path / "a.zip",
        deflate(original[: len(original) // 2]),
        method=zipfile.ZIP_DEFLATED,
        crc=zlib.crc32(original),
        file_size=len(original),
    )
    with pytest.raises(
        SourceError,
        match=rf"Train/p1/aug2\.pt: inflates to only {len(original) // 2} of the "
        rf"{len(original)} bytes it declares",
    ):
        read_victim(archive)


def test_a_stored_member_whose_sizes_differ_is_named(tmp_path):
    original = tiny_members()[VICTIM]
    archive = write_raw(
        tmp_path / "a.zip", original, method=zipfile.ZIP_STORED, crc=zlib.crc32(original), file_size=len(original) + 7
    )
    with pytest.raises(SourceError, match=r"Train/p1/aug2\.pt: is stored, yet its size"):
        read_victim(archive)


# ------------------------------------------------------------------------------------------
# Headers: the local header must agree with the central directory
# ------------------------------------------------------------------------------------------


def rename_locally(archive: Path) -> None:
    """Rename ``VICTIM`` to ``aug7`` in its local header only (same length: nothing moves)."""
    data = bytearray(archive.read_bytes())
    at = local_header(bytes(data), VICTIM) + LOCAL["name"]
    data[at : at + len(VICTIM)] = VICTIM.replace("aug2", "aug7").encode()
    archive.write_bytes(bytes(data))


LOCAL_DAMAGE = {
    "file name": (None, r"file name 'Train/p1/aug7\.pt'"),
    "method": ({"method": zipfile.ZIP_STORED}, r"compression method 0, the directory says 8"),
    "crc": ({"crc": 0x12345678}, r"CRC-32 12345678"),
    "compressed size": ({"compress_size": 12}, r"compressed size 12, the directory says \d+"),
    "size": ({"file_size": 13}, r"size 13, the directory says \d+"),
}


@pytest.mark.parametrize("case", sorted(LOCAL_DAMAGE))
def test_a_local_header_that_disagrees_with_the_directory_is_refused(tmp_path, case):
    fields, reason = LOCAL_DAMAGE[case]
    archive = tiny_zip(tmp_path / "a.zip")
    if fields is None:
        rename_locally(archive)
    else:
        patch(archive, VICTIM, "local", **fields)
    with pytest.raises(
        SourceError,
        match=rf"a\.zip: Train/p1/aug2\.pt: local header disagrees with the central "
        rf"directory \({reason}",
    ):
        read_victim(archive)
    with SourceReader(str(archive)) as reader:  # the other members still read
        assert reader.read_bytes(MEMBERS[0]) == tiny_members()[MEMBERS[0]]


def test_a_local_header_with_a_data_descriptor_is_read(tmp_path):
    """Bit 3: CRC and sizes follow the data and the local header holds zeros (zips written to a pipe)."""
    archive = tiny_zip(tmp_path / "a.zip")
    patch(archive, VICTIM, "local", flags=0x08, crc=0, compress_size=0, file_size=0)
    assert read_victim(archive) == tiny_members()[VICTIM]


def test_a_member_compressed_with_another_method_that_is_damaged_is_named(tmp_path):
    """LZMA members are decompressed by the standard library, whose lzma errors are no OSError: still a
    SourceError, saying which stream is damaged."""
    archive = tiny_zip(tmp_path / "a.zip", compression=zipfile.ZIP_LZMA)
    start, length = data_span(archive, VICTIM)
    data = bytearray(archive.read_bytes())
    data[start + length // 2 : start + length // 2 + 8] = bytes(8)
    archive.write_bytes(bytes(data))
    with pytest.raises(
        SourceError, match=r"a\.zip: Train/p1/aug2\.pt: its compressed data is not a valid LZMA stream \("
    ):
        read_victim(archive)


@pytest.mark.parametrize("damage", ["version needed", "utf-8 name"])
def test_a_central_directory_zipfile_chokes_on_is_named(tmp_path, damage):
    """zipfile raises NotImplementedError or UnicodeDecodeError here, not BadZipFile."""
    archive = tiny_zip(tmp_path / "a.zip")
    data = bytearray(archive.read_bytes())
    at = central_entry(bytes(data), VICTIM)
    if damage == "version needed":
        struct.pack_into("<H", data, at + CENTRAL["version_needed"], 99)  # "needs zip 9.9"
    else:
        struct.pack_into("<H", data, at + CENTRAL["flags"], 0x800)  # the name is UTF-8...
        data[at + CENTRAL["name"]] = 0xFF  # ...and it is not
    archive.write_bytes(bytes(data))
    for call in (list_members, fingerprint, SourceReader):
        with pytest.raises(SourceError, match=r"a\.zip: not a readable zip archive"):
            call(str(archive))


# ------------------------------------------------------------------------------------------
# zip64
# ------------------------------------------------------------------------------------------


def zip64_archive(path: Path, layout: str, compression: int, monkeypatch) -> Path:
    """A tiny archive with zip64 records: in the local headers only, or everywhere.

    ``everywhere`` lowers zipfile's 4 GB and 65535-entry limits while writing, so that it writes
    what it writes for the 20 GB release: zip64 sizes and offsets in the central directory and
    zip64 end-of-central-directory records.
    """
    if layout == "local headers":
        return tiny_zip(path, compression=compression, force_zip64=True)
    with monkeypatch.context() as patched:
        patched.setattr(zipfile, "ZIP64_LIMIT", 1)
        patched.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 1)
        return tiny_zip(path, compression=compression)


@pytest.mark.parametrize("compression", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED], ids=["deflated", "stored"])
@pytest.mark.parametrize("layout", ["local headers", "everywhere"])
def test_zip64_members_read_bit_exact_through_the_fast_reader(tmp_path, monkeypatch, layout, compression):
    archive = zip64_archive(tmp_path / "zip64.zip", layout, compression, monkeypatch)
    data = archive.read_bytes()
    for name in MEMBERS:  # every local header really is a zip64 one
        at = local_header(data, name)
        assert struct.unpack_from("<LL", data, at + LOCAL["compress_size"]) == (0xFFFFFFFF, 0xFFFFFFFF)
        extra = at + 30 + struct.unpack_from("<H", data, at + 26)[0]
        assert struct.unpack_from("<H", data, extra)[0] == 0x0001, "a zip64 extra field"
    if layout == "everywhere":
        assert b"PK\x06\x06" in data and b"PK\x06\x07" in data, "zip64 end of central directory record and locator"
        assert struct.unpack_from("<L", data, central_entry(data, MEMBERS[2]) + 42)[0] == 0xFFFFFFFF, "zip64 offset"

    expected = tiny_members()
    with SourceReader(str(archive)) as reader:
        for name in MEMBERS:
            assert reader.read_bytes(name) == expected[name]  # every member goes through our reader
            decoded = reader.read_sample(name)
            for field, array in tiny_sample(1, int(name[-4])).items():
                assert decoded[field].dtype == array.dtype and decoded[field].tobytes() == array.tobytes()
    assert [m.member for m in list_members(archive)] == MEMBERS
    plain = tiny_zip(tmp_path / "plain" / "zip64.zip", compression=compression)
    assert fingerprint(archive)["fingerprint"] == fingerprint(plain)["fingerprint"], "same members, same fingerprint"


@pytest.mark.slow
def test_a_zip64_archive_converts_and_verifies(tmp_path, monkeypatch, dask_scheduler):
    archive = zip64_archive(tmp_path / "SSMSpine_Train.zip", "everywhere", zipfile.ZIP_DEFLATED, monkeypatch)
    summary = convert([archive], tmp_path / "out", fast_options(dask_scheduler))
    assert summary.samples == 3 and not summary.rejected
    assert verify(tmp_path / "out", [archive], scheduler=dask_scheduler).ok


# ------------------------------------------------------------------------------------------
# Through convert, with and without --skip-bad
# ------------------------------------------------------------------------------------------


def _invalid_stream(archive: Path) -> None:
    start, length = data_span(archive, VICTIM)
    data = bytearray(archive.read_bytes())
    data[start : start + length] = b"\xff" * length
    archive.write_bytes(bytes(data))


def _ends_early(archive: Path) -> None:
    original = tiny_members()[VICTIM]
    write_raw(
        archive, deflate(original[:100]), method=zipfile.ZIP_DEFLATED, crc=zlib.crc32(original), file_size=len(original)
    )


def _legacy_that_runs_code(archive: Path) -> None:
    canary = archive.parent / "pwned"
    write_zip(archive, {**tiny_members(), VICTIM: legacy_pt_bytes({"img": _Payload(str(canary))}, numpy_pickle=2)})


CONVERT_DAMAGE = {
    "invalid stream": (_invalid_stream, "its compressed data is not a valid deflate stream"),
    "local name": (rename_locally, "local header disagrees with the central directory"),
    "ends early": (_ends_early, "inflates to only 100 of the"),
    "legacy runs code": (
        _legacy_that_runs_code,
        rf"refused: the pickle asks for globals outside the allow-list \[{os.mkdir.__module__}\.mkdir\]; loading",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CONVERT_DAMAGE))
def test_a_damaged_member_stops_convert_or_is_rejected(tmp_path, dask_scheduler, case):
    damage, reason = CONVERT_DAMAGE[case]
    archive = tiny_zip(tmp_path / "SSMSpine_Train.zip")
    damage(archive)
    with pytest.raises(SourceError, match=rf"SSMSpine_Train\.zip: Train/p1/aug2\.pt: {reason}"):
        convert([archive], tmp_path / "out", fast_options(dask_scheduler, shard_bytes=1))
    assert not (tmp_path / "out" / "manifest.json").exists()

    summary = convert([archive], tmp_path / "out2", fast_options(dask_scheduler, skip_bad=True))
    assert summary.samples == 2 and [r.member for r in summary.rejected] == [VICTIM]
    rejected = json.loads((tmp_path / "out2" / "rejected.json").read_text())
    assert rejected[0]["archive"] == str(archive) and re.match(reason, rejected[0]["reason"])
    assert verify(tmp_path / "out2", [archive], scheduler=dask_scheduler).ok
    assert not (tmp_path / "pwned").exists(), "no payload ran, in the client or in a worker"


@pytest.mark.slow
def test_legacy_torch_files_convert_bit_exact(tmp_path, dask_scheduler):
    """Members saved in torch's pre-1.6 format (pickles, no zip), numpy values and tensors, next to zip-format ones."""
    samples = {name: tiny_sample(1, aug) for aug, name in enumerate(MEMBERS, start=1)}
    as_tensors = {field: torch.from_numpy(array) for field, array in samples[MEMBERS[2]].items()}
    archive = write_zip(
        tmp_path / "SSMSpine_Train.zip",
        {
            MEMBERS[0]: pt_bytes(samples[MEMBERS[0]], RELEASE_STYLE),
            MEMBERS[1]: legacy_pt_bytes(samples[MEMBERS[1]], numpy_pickle=1),
            MEMBERS[2]: legacy_pt_bytes(as_tensors, numpy_pickle=2),
        },
    )
    out = tmp_path / "out"
    summary = convert([archive], out, fast_options(dask_scheduler))
    assert summary.samples == 3 and not summary.rejected
    dataset = ZarrDataset(out, "train")
    for aug, name in enumerate(MEMBERS, start=1):
        converted = dataset.get(patient=1, aug=aug)
        for field, expected in samples[name].items():
            assert converted[field].numpy().dtype == expected.dtype
            assert converted[field].numpy().tobytes() == expected.tobytes(), (name, field)
    assert verify(out, [archive], scheduler=dask_scheduler).ok


# ------------------------------------------------------------------------------------------
# Property: random bit flips anywhere end in exit 0 or 2, never a traceback
# ------------------------------------------------------------------------------------------


def _regions(data: bytes) -> dict[str, list[tuple[int, int]]]:
    """Byte ranges of an archive: member data, local headers, central directory (with its end record)."""
    regions: dict[str, list[tuple[int, int]]] = {"data": [], "local header": [], "central directory": []}
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
        directory = archive.start_dir
    for info in infos:
        name_length, extra_length = struct.unpack_from("<HH", data, info.header_offset + 26)
        start = info.header_offset + 30 + name_length + extra_length
        regions["local header"].append((info.header_offset, start))
        regions["data"].append((start, start + info.compress_size))
    regions["central directory"].append((directory, len(data)))
    return regions


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[Path, dict]:
    """The tiny release-style archive (three members, deflated) and its regions.

    A path, not the bytes: hypothesis prints the arguments of a failing example.
    """
    archive = tiny_zip(tmp_path_factory.mktemp("pristine") / "SSMSpine_Train.zip")
    return archive, _regions(archive.read_bytes())


@st.composite
def bit_flips(draw, regions: dict) -> list[int]:
    """1 to 3 bit positions, each in a region (data / local header / central directory) drawn first."""
    flips = []
    for _ in range(draw(st.integers(1, 3))):
        region = draw(st.sampled_from(sorted(regions)))
        start, end = draw(st.sampled_from(regions[region]))
        flips.append(draw(st.integers(start * 8, end * 8 - 1)))
    return flips


@pytest.mark.slow
@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_random_bit_flips_end_in_a_clean_exit(pristine, dask_scheduler, capsys, data):
    original, regions = pristine
    flips = data.draw(bit_flips(regions), label="bit positions")
    damaged = bytearray(original.read_bytes())
    for bit in flips:
        damaged[bit // 8] ^= 1 << (bit % 8)
    work = Path(tempfile.mkdtemp(prefix="flips-"))
    try:
        archive = work / "SSMSpine_Train.zip"
        archive.write_bytes(bytes(damaged))
        out = work / "out"
        capsys.readouterr()
        rc = main(
            ["convert", str(archive), "--out", str(out), "--skip-bad", "--scheduler", dask_scheduler, "--no-progress"]
        )
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err + captured.out
        assert rc in (0, 2), f"exit {rc}"
        if rc == 2:
            last = captured.err.strip().splitlines()[-1]
            assert last.startswith("ssmspine convert: error: ") and str(archive) in last, captured.err
            assert not (out / "manifest.json").exists()
            return
        done = read_manifest(out)
        rejected = json.loads((out / "rejected.json").read_text()) if (out / "rejected.json").exists() else []
        converted = sum(split.samples for split in done.splits.values())
        with zipfile.ZipFile(archive) as listing:  # every sample member is converted or listed as rejected
            samples = [n for n in listing.namelist() if not is_junk(n)]
        assert converted + len(rejected) == len(samples)
        assert all(r["archive"] == str(archive) and r["reason"] for r in rejected)
        assert verify(out, [archive], scheduler=dask_scheduler).ok
        for split in done.splits:  # and what was converted is what was written, not what the damage made of it
            dataset = ZarrDataset(out, split)
            for row in range(len(dataset)):
                sample = dataset[row]
                patient, aug = map(int, re.fullmatch(r"p(\d+)_aug(\d+)", sample["__key__"]).groups())
                for field, expected in tiny_sample(patient, aug).items():
                    assert sample[field].numpy().tobytes() == expected.tobytes(), (sample["__key__"], field)
    finally:
        shutil.rmtree(work, ignore_errors=True)
