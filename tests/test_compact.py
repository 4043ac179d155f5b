"""Compact stored dtypes: label narrowed where proven lossless; readers give source dtypes, or stored ones (compact)."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from pipeline import StreamingDataset, ZarrDataset, to_device
from pipeline.convert import convert
from pipeline.errors import SourceError
from pipeline.store import tar_shards
from pipeline.store.manifest import read_manifest
from pipeline.tools.synth import SynthConfig, cast_sample, make_sample, pt_bytes, write_archive
from pipeline.verify import verify

from conftest import copy_output, fast_options

SMALL = SynthConfig(patients=1, shapes=2, seed=5)


def _first_member(out: Path, field: str) -> bytes:
    with tarfile.open(sorted((out / "wds").glob("train-*.tar"))[0]) as tar:
        info = next(i for i in tar if i.name.endswith(f".{field}.npy.blosc"))
        return tar.extractfile(info).read()


def test_label_is_stored_narrow_and_names_its_source_dtype_everywhere(converted):
    done = read_manifest(converted)
    assert done.schema["label"].dtype == "<i8", "the manifest's schema stays the source's"
    assert done.plan.stored_dtypes == {"label": "|u1"}, "masks are uint8 already; images are not narrowed"
    assert done.stored_schema["label"].dtype == "|u1" and done.stored_schema["img"] == done.schema["img"]
    label = zarr.open_array(converted / "ssmspine.zarr" / "train" / "label", mode="r")
    assert label.dtype == np.uint8 and label.attrs["ssmspine_source_dtype"] == "<i8"
    assert "ssmspine_source_dtype" not in zarr.open_array(converted / "ssmspine.zarr" / "train" / "img").attrs
    payload = _first_member(converted, "label")
    stock = io.BytesIO(payload)  # numpy alone reads the header: the stored dtype
    np.lib.format.read_magic(stock)
    assert np.lib.format.read_array_header_1_0(stock)[2] == np.uint8
    assert tar_shards.member_source_dtype(payload) == np.int64
    assert tar_shards.decode_field(payload).dtype == np.int64
    compact = tar_shards.decode_field(payload, compact=True)
    assert compact.dtype == np.uint8 and np.array_equal(compact, tar_shards.decode_field(payload))


def test_readers_give_source_dtypes_by_default_and_stored_ones_compact(converted):
    fields = ("img", "label", "mask")
    wide = ZarrDataset(converted, "train", fields)
    narrow = ZarrDataset(converted, "train", fields, compact=True)
    assert (
        wide.source_dtypes == narrow.source_dtypes == {"img": torch.float32, "label": torch.int64, "mask": torch.uint8}
    )
    batch, small = wide.__getitems__([0, 5]).whole, narrow.__getitems__([0, 5]).whole
    assert batch["label"].dtype == torch.int64 and small["label"].dtype == torch.uint8
    assert wide[3]["label"].dtype == torch.int64 and narrow[3]["label"].dtype == torch.uint8
    streams = {
        compact: next(iter(StreamingDataset(converted, fields=fields, shuffle=False, batch_size=12, compact=compact)))
        for compact in (False, True)
    }
    assert streams[False]["label"].dtype == torch.int64 and streams[True]["label"].dtype == torch.uint8
    for field in fields:
        assert torch.equal(batch[field], streams[False][field][[0, 5]])
        assert torch.equal(small[field], streams[True][field][[0, 5]])
        assert torch.equal(streams[True][field].to(streams[False][field].dtype), streams[False][field])
    assert streams[False]["label"].max() > 0, "a label that is all zeros would prove little"


def test_to_device_widens_to_the_source_dtypes_and_keeps_keys(converted):
    ds = StreamingDataset(converted, fields=("img", "label"), shuffle=False, batch_size=4, compact=True)
    batch = next(iter(ds))
    moved = to_device(batch, "cpu", ds.source_dtypes)
    assert moved["__key__"] == batch["__key__"] and torch.equal(moved["__pad__"], batch["__pad__"])
    assert moved["label"].dtype == torch.int64 and torch.equal(moved["label"], batch["label"].long())
    assert moved["img"] is batch["img"] or torch.equal(moved["img"], batch["img"])
    assert to_device(batch, "cpu")["label"].dtype == torch.uint8, "without dtypes nothing is widened"


def _archive_with_label_value(tmp_path: Path, value: int) -> Path:
    """A small archive whose last member's label holds ``value`` at one pixel."""
    archive = write_archive(tmp_path / "SSMSpine_Train.zip", SMALL)
    sample = cast_sample(make_sample(1, 9, seed=5), SMALL)
    sample["label"] = sample["label"].copy()
    sample["label"].reshape(-1)[1000] = value
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr("Train/p1/aug9.pt", pt_bytes(sample, SMALL))
    return archive


def test_a_sample_that_does_not_fit_the_stored_dtype_is_an_error_naming_it(tmp_path, dask_scheduler):
    archive = _archive_with_label_value(tmp_path, 300)
    with pytest.raises(SourceError, match=r"Train/p1/aug9\.pt: field 'label' holds 0 \.\. 300.*uint8.*--keep-dtypes"):
        convert([archive], tmp_path / "out", fast_options(dask_scheduler))
    skipped = tmp_path / "skipped"
    summary = convert([archive], skipped, fast_options(dask_scheduler, skip_bad=True))
    assert [r.member for r in summary.rejected] == ["Train/p1/aug9.pt"] and summary.samples == 2
    kept = tmp_path / "kept"
    convert([archive], kept, fast_options(dask_scheduler, keep_dtypes=True))
    done = read_manifest(kept)
    assert done.plan.stored_dtypes == {} and not done.identity.narrow_dtypes
    assert zarr.open_array(kept / "ssmspine.zarr" / "train" / "label", mode="r").dtype == np.int64
    assert ZarrDataset(kept, "train", ["label"])[2]["label"].max() == 300
    assert verify(kept, [archive], scheduler=dask_scheduler).ok


def test_an_output_written_before_stored_dtypes_still_reads(tmp_path, converted, dask_scheduler, train_zip):
    """An output of earlier versions: no stored dtypes in the manifest, every field in its source dtype."""
    out = tmp_path / "old"
    convert([train_zip], out, fast_options(dask_scheduler, keep_dtypes=True))
    document = json.loads((out / "manifest.json").read_text())
    del document["stored_dtypes"], document["identity"]["narrow_dtypes"]
    (out / "manifest.json").write_text(json.dumps(document))
    done = read_manifest(out)
    assert done.stored_schema == done.schema
    for compact in (False, True):
        batch = next(iter(StreamingDataset(out, shuffle=False, batch_size=12, compact=compact)))
        assert batch["label"].dtype == torch.int64
        assert torch.equal(
            batch["label"], ZarrDataset(converted, "train", ["label"]).__getitems__(range(12)).whole["label"]
        )
    assert verify(out, [train_zip], scheduler=dask_scheduler).ok


def test_verify_finds_a_zarr_label_that_lost_its_narrow_dtype(tmp_path, converted, dask_scheduler):
    """The stored dtype is part of the format: an array holding another dtype is a problem."""
    out = copy_output(converted, tmp_path)
    meta = out / "ssmspine.zarr" / "train" / "label" / "zarr.json"
    document = json.loads(meta.read_text())
    document["data_type"] = "int8"
    meta.write_text(json.dumps(document))
    report = verify(out, scheduler=dask_scheduler)
    assert not report.ok and any("label" in p.where for p in report.problems), report.problems
