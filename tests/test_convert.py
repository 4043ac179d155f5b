"""Conversion: bit-exact round trips through both formats, read by independent readers."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import webdataset

from pipeline import decode_wds_sample
from pipeline.convert import convert
from pipeline.convert.members import collect_members
from pipeline.errors import SourceError
from pipeline.schema import FIELDS, LABEL_NAMES
from pipeline.store.codecs import Encoding
from pipeline.store.manifest import read_manifest
from pipeline.tools.synth import SynthConfig, write_archive, write_tree
from pipeline.verify import verify

from conftest import assert_bit_exact, fast_options, load_trusted, manifest_json, tensorstore_read


def _source_samples(archive: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every sample of a zip by key, decoded with plain torch.load (the reference)."""
    samples = {}
    with zipfile.ZipFile(archive) as z:
        names = [n for n in z.namelist() if n.endswith(".pt") and "__MACOSX" not in n]
    for name in names:
        patient, aug = name.split("/")[-2][1:], name.split("/")[-1][3:-3]
        samples[f"p{int(patient):02d}_aug{int(aug):03d}"] = load_trusted(archive, name)
    return samples


def _stock_webdataset_samples(out: Path, split: str) -> dict[str, dict]:
    urls = sorted(str(p) for p in (out / "wds").glob(f"{split}-*.tar"))
    return {s["__key__"]: decode_wds_sample(s) for s in webdataset.WebDataset(urls, shardshuffle=False)}


def check_round_trip(out: Path, archive: Path, split: str) -> None:
    """Every field of every sample of ``archive`` comes back bit-exact from tensorstore and webdataset."""
    expected = _source_samples(archive)
    keys = list(read_manifest(out).splits[split].keys)
    assert sorted(keys) == sorted(expected)
    from_wds = _stock_webdataset_samples(out, split)
    assert list(from_wds) == keys, "tar shards hold the split's samples in manifest order"
    for row, key in enumerate(keys):
        for field in FIELDS:
            truth = np.asarray(expected[key][field])
            assert_bit_exact(from_wds[key][field], truth, f"wds {key}.{field}")
            assert_bit_exact(tensorstore_read(out, split, field, row), truth, f"zarr {key}.{field}")


def test_round_trip_of_the_default_format(converted, train_zip, test_zip):
    check_round_trip(converted, train_zip, "train")
    check_round_trip(converted, test_zip, "test")


def test_manifest_describes_the_output(converted, train_zip):
    manifest = manifest_json(converted)
    assert [s["name"] for s in manifest["sources"]] == ["SSMSpine_Train.zip", "SSMSpine_Test.zip"]
    assert manifest["sources"][0]["bytes"] == train_zip.stat().st_size
    train = manifest["splits"]["train"]
    assert train["samples"] == 12 and len(train["shards"]) > 1, "small shard size gives several shards"
    assert [(p, a) for p, a in zip(train["patient"], train["aug"])] == [(p, a) for p in (1, 2) for a in range(1, 7)]
    total = 0
    for shard in train["shards"]:
        path = converted / shard["file"]
        assert path.stat().st_size == shard["bytes"]
        assert len(shard["keys"]) == len(shard["digests"]["img"])
        total += len(shard["keys"])
    assert total == 12
    assert set(manifest["schema"]) == set(FIELDS)


def test_zarr_layout_and_attributes(converted):
    import zarr

    group = zarr.open_group(converted / "ssmspine.zarr", mode="r")
    train = group["train"]
    assert train["img"].shape == (12, 512, 512)
    assert train["img"].chunks == (1, 512, 512), "one chunk per sample"
    assert train["img"].shards[0] > 1, "chunks packed into shards of several samples"
    assert list(train["patient"][:]) == [1] * 6 + [2] * 6
    assert list(train["aug"][:]) == list(range(1, 7)) * 2
    assert train.attrs["label_names"] == {str(k): v for k, v in LABEL_NAMES.items()}
    assert group["test"]["mask"].shape == (3, 11, 512, 512)


def test_tar_member_names_are_key_field_ext(converted):
    import tarfile

    first = sorted((converted / "wds").glob("train-*.tar"))[0]
    with tarfile.open(first) as tar:
        names = tar.getnames()
    assert names[: len(FIELDS)] == [f"p01_aug001.{f}.npy.blosc" for f in FIELDS]


def test_shards_are_reproducible(tmp_path, train_zip, test_zip, converted, dask_scheduler):
    """The same conversion twice gives byte-identical shards (fixed tar metadata; encodings fixed
    here, as measured encodings may differ between runs), and the same arrays in the Zarr store."""
    done = manifest_json(converted)
    encodings = {f: Encoding.from_json(e) for f, e in done["encodings"].items()}
    out = tmp_path / "again"
    convert([train_zip, test_zip], out, fast_options(dask_scheduler, encodings=encodings))
    again = manifest_json(out)
    assert again["encodings"] == done["encodings"]
    for split in ("train", "test"):
        first, second = done["splits"][split]["shards"], again["splits"][split]["shards"]
        assert [s["sha256"] for s in second] == [s["sha256"] for s in first]
        assert [s["digests"] for s in second] == [s["digests"] for s in first]
    zarr_files = sorted(
        p.relative_to(converted) for p in (converted / "ssmspine.zarr").rglob("c/*/**/*") if p.is_file()
    )
    assert zarr_files and all((out / p).read_bytes() == (converted / p).read_bytes() for p in zarr_files)


VARIANTS = {
    "tensor-values": SynthConfig(values="tensor"),
    "float64-images-float-masks": SynthConfig(image_dtype="float64", mask_dtype="float32", label_dtype="float32"),
    "bool-masks-int-label": SynthConfig(mask_dtype="bool", label_dtype="int64", landmark_dtype="float32"),
    "tensor-uint8-label-stored": SynthConfig(values="tensor", label_dtype="uint8", compression="stored"),
    "numpy2-pickles-nested-root": SynthConfig(numpy_pickle=2, root="SSMSpine_Train/Train", junk=True),
    "legacy-torch-format-tensors": SynthConfig(serialization="legacy", values="tensor"),
    "legacy-torch-format-numpy1": SynthConfig(serialization="legacy"),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variants_round_trip(name, tmp_path, dask_scheduler):
    config = VARIANTS[name]
    config = SynthConfig(**{**config.__dict__, "patients": 1, "shapes": 3, "seed": 7})
    archive = write_archive(tmp_path / "src.zip", config)
    out = tmp_path / "out"
    convert([archive], out, fast_options(dask_scheduler))
    check_round_trip(out, archive, "train")
    assert verify(out, [archive], scheduler=dask_scheduler).ok


def test_extracted_directory_converts_like_the_zip(tmp_path, dask_scheduler, train_zip, converted):
    tree = write_tree(tmp_path / "SSMSpine_Train", SynthConfig(patients=2, shapes=6))
    out = tmp_path / "out"
    convert([tree], out, fast_options(dask_scheduler))
    ours = read_manifest(out).splits["train"]
    zipped = read_manifest(converted).splits["train"]
    assert ours.keys == zipped.keys
    assert [s.digests for s in ours.shards] == [s.digests for s in zipped.shards]
    assert verify(out, [tree], scheduler=dask_scheduler).ok


def test_split_override_and_validation_patients(tmp_path, train_zip, dask_scheduler):
    by_split, _ = collect_members([train_zip], fast_options(dask_scheduler, val_patients=(2,)))
    assert {s: sorted({m.patient for m in ms}) for s, ms in by_split.items()} == {"train": [1], "val": [2]}
    renamed, _ = collect_members([train_zip], fast_options(dask_scheduler, split="holdout"))
    assert list(renamed) == ["holdout"]


def test_duplicate_keys_across_archives_are_refused(tmp_path, train_zip, dask_scheduler):
    with pytest.raises(SourceError, match="p01_aug001.*also comes from"):
        collect_members([train_zip, train_zip], fast_options(dask_scheduler))


def test_a_sample_off_schema_is_an_error_naming_member_and_field(tmp_path, dask_scheduler):
    archive = write_archive(tmp_path / "a.zip", SynthConfig(patients=1, shapes=3))
    odd = write_archive(tmp_path / "b.zip", SynthConfig(patients=1, shapes=3, mask_dtype="bool"))
    with zipfile.ZipFile(archive, "a") as z, zipfile.ZipFile(odd) as other:
        z.writestr("Train/p1/aug9.pt", other.read("Train/p1/aug1.pt"))
    with pytest.raises(SourceError, match=r"a\.zip: Train/p1/aug9\.pt: field 'mask' is \|b1"):
        convert([archive], tmp_path / "out", fast_options(dask_scheduler))


def test_rerun_on_a_finished_output_does_nothing(converted, train_zip, test_zip, dask_scheduler):
    before = json.loads((converted / "manifest.json").read_text())
    summary = convert([train_zip, test_zip], converted, fast_options(dask_scheduler))
    assert summary.up_to_date and summary.shards_written == 0
    assert json.loads((converted / "manifest.json").read_text()) == before


def test_fixed_encodings_are_used_as_given_and_recorded_in_the_identity(tmp_path, test_zip, dask_scheduler):
    fields = _fields_of(test_zip)
    plain = Encoding("zstd", 1, 0, 1 << 20)  # no shuffle: never what measurement picks for the float images
    options = fast_options(dask_scheduler, encodings=dict.fromkeys(fields, plain))
    outputs = [tmp_path / "a", tmp_path / "b"]
    for out in outputs:
        convert([test_zip], out, options)
    first, second = (manifest_json(out) for out in outputs)
    assert set(map(json.dumps, first["encodings"].values())) == {json.dumps(plain.to_json())}
    assert first["identity"]["encodings"] == dict.fromkeys(sorted(fields), plain.to_json())
    assert [s["sha256"] for s in first["splits"]["test"]["shards"]] == [
        s["sha256"] for s in second["splits"]["test"]["shards"]
    ]
    with pytest.raises(ValueError, match=r"not for the field\(s\) \['bone'"):
        convert([test_zip], tmp_path / "c", fast_options(dask_scheduler, encodings={"img": plain}))


def _fields_of(archive: Path) -> list[str]:
    with zipfile.ZipFile(archive) as z:
        return list(load_trusted(archive, next(n for n in z.namelist() if n.endswith(".pt"))))
