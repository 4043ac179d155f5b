"""Finding members and decoding them safely."""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np
import pytest
import torch

from pipeline.schema import SchemaError, SourceError, check_sample, schema_of
from pipeline.source import SourceReader, decode_sample, fingerprint, list_members, parse_member
from pipeline.synth import SynthConfig, make_sample, pt_bytes, write_archive, write_tree


def test_members_are_found_sorted_and_junk_is_skipped(tmp_path):
    archive = write_archive(tmp_path / "a.zip", SynthConfig(patients=2, shapes=3, root="SSMSpine_Train/Train", junk=True))
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
    config = SynthConfig(values=values, numpy_pickle=numpy_pickle, image_dtype="float64", mask_dtype="bool",
                         label_dtype="float32", landmark_dtype="float32")  # fmt: skip
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
