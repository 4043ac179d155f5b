"""The Zarr store as plain xarray sees it: named dimensions and patient/aug coordinates on every array.

A user with only xarray, dask and zarr opens a split with ``xarray.open_zarr`` from a directory
or from object storage (a real S3-protocol server on 127.0.0.1); outputs written before arrays
named their dimensions still open in our readers, and a resumed conversion names them.
"""

from __future__ import annotations

import json
from pathlib import Path

import dask.array
import numpy as np
import pytest
import xarray as xr

from pipeline.read.zarr_dataset import ZarrDataset
from pipeline.store import zarr_layout, zarr_store
from pipeline.store.manifest import read_manifest
from pipeline.tools.xarray_view import open_zarr

from conftest import assert_bit_exact, copy_output

#: Plain xarray falls back to reading each array's metadata (we write no consolidated metadata,
#: which Zarr v3 does not define) and says so with this warning; it changes nothing else.
NOT_CONSOLIDATED = "ignore:Failed to open Zarr store with consolidated metadata:RuntimeWarning"


def _assert_plain_view_is_the_dataset(view: xr.Dataset, out: Path, rows: tuple[int, ...]) -> None:
    ds = ZarrDataset(out, compact=True)  # plain xarray shows the stored dtypes
    assert set(view.data_vars) == set(ds.fields)
    assert {"patient", "aug"} <= set(view.coords) and view.patient.dims == view.aug.dims == ("sample",)
    assert view.patient.values.tolist() == ds.patients.tolist() and view.aug.values.tolist() == ds.augs.tolist()
    assert view.img.dims == ("sample", "y", "x") and view.mask.dims == ("sample", "structure", "y", "x")
    assert view.bone.dims == ("sample", "vertebra", "bone_point", "axis")
    assert isinstance(view.img.data, dask.array.Array), "open_zarr read the data eagerly"
    for row in rows:
        key, record = ds.read_record(row)
        for field, values in record.items():
            assert_bit_exact(view[field][row].values, values, f"{key}.{field}")
    means = view.img.mean(("y", "x"))
    assert isinstance(means.data, dask.array.Array), "the reduction loaded the data"
    expected = [ds.read_record(i, ("img",))[1]["img"].mean(dtype=np.float64) for i in range(len(ds))]
    np.testing.assert_allclose(means.values, expected, rtol=1e-6)
    per_patient = means.groupby(view.patient.compute()).mean()  # coordinates load on demand, as in xarray
    np.testing.assert_allclose(
        per_patient.sel(patient=2).values, np.mean(np.array(expected)[ds.patients == 2]), rtol=1e-6
    )


@pytest.mark.filterwarnings(NOT_CONSOLIDATED)
def test_plain_xarray_opens_a_split_from_disk(converted):
    view = xr.open_zarr(zarr_layout.store_path(converted), group="train")
    _assert_plain_view_is_the_dataset(view, converted, rows=(0, 7))


@pytest.mark.filterwarnings(NOT_CONSOLIDATED)
def test_plain_xarray_opens_a_split_from_object_storage(converted, s3_server):
    url = s3_server.upload(converted)
    view = xr.open_zarr(f"{url}/{zarr_layout.STORE_NAME}", group="train")
    _assert_plain_view_is_the_dataset(view, converted, rows=(1, 11))


def test_every_array_names_its_dimensions(converted):
    for split in ("train", "test"):
        for field in (*read_manifest(converted).schema, "patient", "aug"):
            array = zarr_layout.open_array(converted, split, field)
            assert array.metadata.dimension_names == zarr_layout.array_dimensions(array, field)
            assert array.metadata.dimension_names[0] == "sample", f"{split}/{field}"
    assert zarr_layout.dimension_names("img", (256, 256)) == ("sample", "img_dim0", "img_dim1")


def _strip_names(out: Path) -> None:
    """Make ``out`` look like an output written before arrays named their dimensions."""
    for path in (zarr_layout.store_path(out)).glob("*/*/zarr.json"):
        meta = json.loads(path.read_text())
        meta.pop("dimension_names", None)
        meta["attributes"].pop("coordinates", None)
        path.write_text(json.dumps(meta))


def test_outputs_without_dimension_names_open_in_our_readers_and_get_them_on_resume(converted, tmp_path):
    out = copy_output(converted, tmp_path)
    _strip_names(out)
    assert zarr_layout.open_array(out, "train", "img").metadata.dimension_names is None
    ds, reference = ZarrDataset(out), ZarrDataset(converted)
    assert ds.fast_fields == reference.fast_fields == ds.fields
    assert_bit_exact(ds[3]["mask"].numpy(), reference[3]["mask"].numpy(), "mask")
    view = open_zarr(out, "train")
    assert view.mask.dims == ("sample", "structure", "y", "x") and view.disk.dims == (
        "sample",
        "disc",
        "disc_point",
        "axis",
    )
    assert_bit_exact(view.label[5].values, reference[5]["label"].numpy(), "label")

    _create_split_again(out, out)
    for field in (*read_manifest(out).schema, "patient"):
        renamed, original = (zarr_layout.open_array(o, "train", field) for o in (out, converted))
        assert renamed.metadata == original.metadata, field
    assert_bit_exact(ZarrDataset(out)[3]["mask"].numpy(), reference[3]["mask"].numpy(), "mask after resume")


def _create_split_again(out: Path, where: str | Path) -> None:
    """What a resumed conversion of ``out`` does to its train split, at ``where`` (``out`` or a URL)."""
    manifest = read_manifest(out)
    zarr_store.create_split(
        where,
        "train",
        manifest.stored_schema,
        manifest.encodings,
        zarr_layout.open_array(out, "train", "patient")[:],
        zarr_layout.open_array(out, "train", "aug")[:],
        shard_samples=manifest.plan.group_samples,
        attributes={"fields": list(manifest.schema)},
        source_dtypes={f: manifest.schema[f].dtype for f in manifest.plan.stored_dtypes},
    )


def test_a_resume_on_object_storage_names_the_dimensions_too(converted, tmp_path, s3_server):
    out = copy_output(converted, tmp_path)
    _strip_names(out)
    url = s3_server.upload(out)
    _create_split_again(out, url)
    store = zarr_layout.open_store(url)
    for field in (*read_manifest(out).schema, "patient"):
        renamed = zarr_layout.open_array_in(store, "train", field)
        assert renamed.metadata == zarr_layout.open_array(converted, "train", field).metadata, field
