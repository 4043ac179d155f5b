"""Finding members and decoding them safely."""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import SchemaError, SourceError
from pipeline.schema import check_sample, schema_of
from pipeline.source.members import fingerprint, list_members, parse_member
from pipeline.source.messages import plain
from pipeline.source.pickle_scan import pickle_globals
from pipeline.source.torch_load import decode_sample
from pipeline.source.zip_reader import SourceReader
from pipeline.tools.synth import SynthConfig, cast_sample, make_sample, pt_bytes, write_archive, write_tree


def legacy_pt_bytes(sample: dict, numpy_pickle: int = 1, protocol: int = 2) -> bytes:
    """``torch.save`` in torch's legacy format (before 1.6: pickles back to back, no zip)."""
    data = pt_bytes(sample, SynthConfig(numpy_pickle=numpy_pickle, serialization="legacy"), protocol)
    assert data.startswith(b"\x80") and not data.startswith(b"PK"), "the legacy format, not a zip"
    return data


def test_members_are_found_sorted_and_junk_is_skipped(tmp_path):
    archive = write_archive(
        tmp_path / "a.zip", SynthConfig(patients=2, shapes=3, root="SSMSpine_Train/Train", junk=True)
    )
    members = list_members(archive)
    assert [(m.split, m.patient, m.aug) for m in members] == [("train", p, a) for p in (1, 2) for a in (1, 2, 3)]
    assert members[0].member == "SSMSpine_Train/Train/p1/aug1.pt"
    assert members[0].key == "p01_aug001"
    assert {m.split for m in list_members(archive, split="val")} == {"val"}


def test_an_extracted_directory_lists_like_its_zip(tmp_path):
    config = SynthConfig(patients=1, shapes=2, root="Test", junk=True)
    tree = write_tree(tmp_path / "tree", config)
    archive = write_archive(tmp_path / "a.zip", config)
    assert [m.member for m in list_members(tree)] == [m.member for m in list_members(archive)]
    assert list_members(tree)[0].split == "test"


def test_a_pt_file_outside_the_layout_is_named(tmp_path):
    with pytest.raises(SourceError, match=r"x\.zip: Train/aug1\.pt: .*layout"):
        parse_member("x.zip", "Train/aug1.pt")


def test_missing_and_unreadable_sources_are_clear_errors(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        list_members(tmp_path / "nope.zip")
    (tmp_path / "bad.zip").write_bytes(b"not a zip at all")
    with pytest.raises(SourceError, match=r"bad\.zip: not a readable zip"):
        list_members(tmp_path / "bad.zip")


@pytest.mark.parametrize("numpy_pickle", [1, 2])
@pytest.mark.parametrize("values", ["numpy", "tensor"])
def test_decoding_keeps_every_dtype_and_byte(numpy_pickle, values):
    config = SynthConfig(
        values=values,
        numpy_pickle=numpy_pickle,
        image_dtype="float64",
        mask_dtype="bool",
        label_dtype="float32",
        landmark_dtype="float32",
    )
    sample = make_sample(1, 1)
    data = pt_bytes(sample, config)
    decoded = decode_sample(data, "a.zip", "Train/p1/aug1.pt")
    reference = torch.load(io.BytesIO(data), weights_only=False)
    for field, value in reference.items():
        expected = value.numpy() if isinstance(value, torch.Tensor) else value
        assert decoded[field].dtype == expected.dtype
        assert decoded[field].shape == expected.shape
        assert decoded[field].tobytes() == expected.tobytes()


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.uint8, torch.float16, torch.bool])
def test_tensor_dtypes_map_to_the_same_numpy_dtype(dtype):
    buffer = io.BytesIO()
    torch.save({"x": torch.ones(3, 4, dtype=dtype)}, buffer)
    decoded = decode_sample(buffer.getvalue(), "a.zip", "m.pt")
    assert decoded["x"].dtype == torch.ones(1, dtype=dtype).numpy().dtype


def test_bfloat16_is_refused_with_the_field_named():
    buffer = io.BytesIO()
    torch.save({"img": torch.ones(2, dtype=torch.bfloat16)}, buffer)
    with pytest.raises(SourceError, match="field 'img' has dtype torch.bfloat16"):
        decode_sample(buffer.getvalue(), "a.zip", "m.pt")


class _Payload:
    """Unpickling this creates a directory: the canary for code execution."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_a_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path):
    canary = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save({"img": _Payload(str(canary))}, buffer)
    with pytest.raises(SourceError, match=r"evil\.zip: Train/p1/aug1\.pt: refused.*(posix|os)\.mkdir"):
        decode_sample(buffer.getvalue(), "evil.zip", "Train/p1/aug1.pt")
    assert not canary.exists()


@pytest.mark.parametrize("numpy_pickle", [1, 2])
@pytest.mark.parametrize("values", ["numpy", "tensor"])
def test_legacy_torch_files_decode_bit_exact(numpy_pickle, values):
    config = SynthConfig(values=values)
    sample = cast_sample(make_sample(1, 1), config)
    decoded = decode_sample(legacy_pt_bytes(sample, numpy_pickle), "a.zip", "Train/p1/aug1.pt")
    assert list(decoded) == list(sample)
    for field, value in sample.items():
        expected = value.numpy() if isinstance(value, torch.Tensor) else value
        assert decoded[field].dtype == expected.dtype and decoded[field].shape == expected.shape
        assert decoded[field].tobytes() == expected.tobytes()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")
@pytest.mark.parametrize("protocol", [2, 4])  # 4: the pickle names globals with STACK_GLOBAL
def test_a_legacy_pickle_that_would_run_code_is_refused_naming_its_globals(tmp_path, protocol):
    canary = tmp_path / "pwned"
    data = legacy_pt_bytes({"img": _Payload(str(canary)), "label": np.zeros(3)}, numpy_pickle=2, protocol=protocol)
    with pytest.raises(SourceError) as refused:
        decode_sample(data, "evil.zip", "Train/p1/aug1.pt")
    assert not canary.exists(), "the payload never ran"
    mkdir = f"{os.mkdir.__module__}.mkdir"
    assert str(refused.value) == (
        f"evil.zip: Train/p1/aug1.pt: refused: the pickle asks for globals outside the allow-list [{mkdir}]; "
        "loading it could run code, so it was not loaded"
    ), "named exactly, and the numpy globals the allow-list admits are not listed"


def test_globals_are_read_from_the_opcodes_stack_and_memo_included():
    """STACK_GLOBAL takes its names from the stack; here they come from the memo, past decoy strings."""
    crafted = (
        b"\x80\x04"  # PROTO 4
        b"\x8c\x05posix\x94\x8c\x05mkdir\x94"  # two strings, memoized as 0 and 1
        b"00"  # POP POP
        b"\x8c\x05numpy\x8c\x07ndarray00"  # decoys, pushed and popped
        b"h\x00h\x01\x93"  # BINGET 0, BINGET 1, STACK_GLOBAL
        b"."  # STOP
    )
    assert pickle_globals(crafted) == {"posix.mkdir"}
    zip_format = io.BytesIO()
    torch.save({"f": os.mkdir}, zip_format)  # torch's zip format: data.pkl is scanned
    assert f"{os.mkdir.__module__}.mkdir" in pickle_globals(zip_format.getvalue())
    assert pickle_globals(b"\x80\x02 not a pickle") == set(), "damage ends the scan, it does not raise"


class _UnlistedGlobal:
    """A global in a module torch does not block, so torch advises allow-listing it; were it called,
    it would write ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return np.save, (self.path, np.zeros(1))


def _torch_file(obj: object, legacy: bool) -> bytes:
    if legacy:
        return legacy_pt_bytes(obj, numpy_pickle=2)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _damaged_variants(data: bytes) -> list[bytes]:
    cuts = [data[:n] for n in range(1, len(data), max(1, len(data) // 40))]
    flips = []
    for at in range(2, len(data), max(1, len(data) // 60)):
        flipped = bytearray(data)
        flipped[at] ^= 0x21
        flips.append(bytes(flipped))
    return cuts + flips


@pytest.mark.parametrize("legacy", [False, True], ids=["zip-format", "legacy"])
def test_no_reason_passes_on_torchs_advice_to_load_unsafely(tmp_path, legacy):
    """torch's errors advise re-running with ``weights_only=False`` or allow-listing the global: never ours."""
    malicious = [
        _torch_file({"img": _Payload(str(tmp_path / "pwned"))}, legacy),
        _torch_file({"img": _UnlistedGlobal(str(tmp_path / "never-written"))}, legacy),
    ]
    damaged = _damaged_variants(_torch_file({"img": torch.arange(64.0), "label": np.arange(16)}, legacy))
    reasons = []
    for data in malicious + damaged:
        try:
            decode_sample(data, "a.zip", "m.pt")
        except SourceError as error:
            reasons.append(error.reason)
    assert len(reasons) >= len(malicious) + len(damaged) // 2
    assert "refused: the pickle asks for globals outside the allow-list [numpy.save]" in reasons[1]
    assert any(r.startswith("refused by the safe unpickler: ") for r in reasons), "torch's wrapped errors were seen"
    for reason in reasons:
        assert "weights_only" not in reason and "trust" not in reason.lower(), reason
        assert "\n" not in reason and len(reason) < 400, reason
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "never-written.npy").exists()


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(before=st.text(), after=st.text(), advice=st.sampled_from(["weights_only=False", "WEIGHTS_ONLY = false"]))
def test_plain_drops_any_sentence_with_the_advice(before, after, advice):
    line = plain(before + advice + after)
    assert "weights_only" not in line.lower() and "\n" not in line


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "is empty"),
        (b"certainly not a torch file", "is not a torch file"),
        (b"PK\x03\x04 a truncated zip", "is not a readable torch file"),
    ],
)
def test_damaged_members_name_archive_member_and_reason(data, reason):
    with pytest.raises(SourceError, match=f"a.zip: Train/p1/aug1.pt: {reason}"):
        decode_sample(data, "a.zip", "Train/p1/aug1.pt")


def test_a_non_dict_is_refused():
    buffer = io.BytesIO()
    torch.save([torch.ones(2)], buffer)
    with pytest.raises(SourceError, match="holds a list"):
        decode_sample(buffer.getvalue(), "a.zip", "m.pt")


def test_schema_check_names_the_field():
    sample = make_sample(1, 1)
    schema = schema_of(sample)
    odd = dict(sample, mask=sample["mask"].astype(bool))
    with pytest.raises(SchemaError, match="a.zip: m.pt: field 'mask'"):
        check_sample(odd, schema, "a.zip", "m.pt")
    with pytest.raises(SchemaError, match="missing key"):
        check_sample({k: v for k, v in sample.items() if k != "bone"}, schema, "a.zip", "m.pt")


def test_fingerprint_changes_with_content_not_with_reading(tmp_path):
    archive = write_archive(tmp_path / "a.zip", SynthConfig(patients=1, shapes=2))
    first = fingerprint(archive)
    assert fingerprint(archive) == first
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr("Train/p1/aug3.pt", pt_bytes(make_sample(1, 3), SynthConfig()))
    assert fingerprint(archive)["fingerprint"] != first["fingerprint"]


def test_reader_reads_members_in_place(tmp_path):
    archive = write_archive(tmp_path / "a.zip", SynthConfig(patients=1, shapes=2))
    with SourceReader(str(archive)) as reader:
        sample = reader.read_sample("Train/p1/aug2.pt")
    np.testing.assert_array_equal(sample["img"], make_sample(1, 2)["img"])
