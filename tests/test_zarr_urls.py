"""ZarrDataset and open_zarr over URLs: ``file://``, ``s3://`` (a real S3-protocol server on 127.0.0.1)
and ``http://`` (a real HTTP server with ``Range`` support on 127.0.0.1).

The converted fixture is uploaded with s3fs as users upload theirs; every sample and field read
through the URL must equal the local read bit for bit, on the fast path (ranged reads of shard
indexes and chunks) and through zarr-python, in the main process and in DataLoader workers.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import s3fs
import torch
from torch.utils.data import DataLoader

from pipeline.errors import NotFoundError, OutputError, UsageError
from pipeline.read.zarr_dataset import ZarrDataset
from pipeline.store import zarr_layout
from pipeline.store.manifest import read_manifest
from pipeline.tools.xarray_view import open_zarr

from conftest import assert_bit_exact


@pytest.fixture(scope="module")
def s3_output(converted, s3_server) -> str:
    """The URL of the converted fixture's manifest and Zarr store in a fresh bucket."""
    return s3_server.upload(converted)


def _url(scheme: str, converted: Path, request) -> str:
    if scheme == "http":
        return request.getfixturevalue("serve")(converted).url
    return Path(converted).as_uri() if scheme == "file" else request.getfixturevalue("s3_output")


def _assert_equal_datasets(ds: ZarrDataset, reference: ZarrDataset) -> None:
    assert ds.keys == reference.keys and ds.fields == reference.fields
    assert ds.patients.tolist() == reference.patients.tolist() and ds.augs.tolist() == reference.augs.tolist()
    for row in range(len(ds)):
        key, record = ds.read_record(row)
        _, expected = reference.read_record(row)
        for field, values in expected.items():
            assert_bit_exact(record[field], values, f"{ds.root} {ds.split}/{key}.{field}")


@pytest.mark.parametrize("scheme", ["file", "s3", "http"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_fast_path_over_a_url_equals_the_local_read(converted, request, scheme, split):
    url = _url(scheme, converted, request)
    ds = ZarrDataset(url, split)
    assert ds.fast_fields == ds.fields, "the fast path did not recognise the layout at the URL"
    _assert_equal_datasets(ds, ZarrDataset(converted, split))
    read = ds._local.indexes
    assert read and all(path.startswith(f"{scheme}://") for path in read), "shards were not read by URL"


@pytest.mark.parametrize("scheme", ["file", "s3"])
def test_zarr_python_over_a_url_equals_the_local_read(converted, request, scheme):
    ds = ZarrDataset(_url(scheme, converted, request), "test", fast=False)
    assert ds.fast_fields == ()
    _assert_equal_datasets(ds, ZarrDataset(converted, "test"))


@pytest.mark.parametrize("scheme", ["file", "s3"])
def test_dataloader_workers_read_a_url_like_the_local_output(converted, request, scheme):
    ds = ZarrDataset(_url(scheme, converted, request), fields=("img", "mask", "shape"))
    ds[0]  # the parent's own state must not travel into the workers
    copy = pickle.loads(pickle.dumps(ds))
    assert copy._local is None and len(pickle.dumps(ds)) < 10_000
    reference = ZarrDataset(converted, fields=("img", "mask", "shape"))
    loader = DataLoader(ds, batch_size=5, num_workers=2, shuffle=True, generator=torch.Generator().manual_seed(3))
    seen = []
    for batch in loader:
        for j, key in enumerate(batch["__key__"]):
            expected = reference[reference.index_of(key=key)]
            for field in ("img", "mask", "shape"):
                assert_bit_exact(batch[field][j].numpy(), expected[field].numpy(), f"worker {key}.{field}")
            seen.append(key)
    assert sorted(seen) == sorted(reference.keys)


def test_storage_options_reach_every_read(converted, s3_output, s3_server, monkeypatch):
    """Without the environment's endpoint, only the options say where the bucket is."""
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    s3fs.S3FileSystem.clear_instance_cache()  # no filesystem made with the environment's endpoint is reused
    options = {"endpoint_url": s3_server.endpoint_url}
    ds = ZarrDataset(s3_output, "test", storage_options=options)
    _assert_equal_datasets(ds, ZarrDataset(converted, "test"))
    slow = ZarrDataset(s3_output, "test", fields=("label",), fast=False, storage_options=options)
    assert_bit_exact(slow[1]["label"].numpy(), ds[1]["label"].numpy(), "label through zarr-python")
    batches = list(DataLoader(ds, batch_size=2, num_workers=2))
    assert [k for b in batches for k in b["__key__"]] == list(ds.keys)
    view = open_zarr(s3_output, "test", fields=("img",), storage_options=options)
    assert_bit_exact(view.img[2].values, ds[2]["img"].numpy(), "open_zarr img")


def test_open_zarr_over_s3_is_lazy_and_equals_the_local_view(converted, s3_output):
    remote, local = open_zarr(s3_output, "train"), open_zarr(converted, "train")
    assert remote.img.data.chunks == local.img.data.chunks
    assert remote.key.values.tolist() == local.key.values.tolist()
    means = remote.img.groupby("patient").mean()
    np.testing.assert_array_equal(means.values, local.img.groupby("patient").mean().values)
    assert_bit_exact(remote.sel(key="p02_aug004").mask.values, local.sel(key="p02_aug004").mask.values, "mask")


def test_missing_buckets_prefixes_and_stores_are_errors_naming_the_url(converted, s3_output, s3_server):
    bucket = f"{s3_output.split('/')[2]}-missing"
    for url in (f"s3://{bucket}/datasets/ssmspine", f"{s3_output}/nowhere"):
        for opener in (ZarrDataset, open_zarr):
            with pytest.raises(OutputError, match=f"{url}/manifest.json: not found"):
                opener(url)
    manifest_only = s3_server.upload(converted, parts=("manifest.json",))
    with pytest.raises(OutputError, match=f"{manifest_only}/ssmspine.zarr/train: not a Zarr group"):
        ZarrDataset(manifest_only)
    with pytest.raises(UsageError, match="nosuch://bucket/out"):
        ZarrDataset("nosuch://bucket/out")


def test_zarr_errors_name_a_url_without_its_password(converted):
    manifest = read_manifest(converted)
    url = "http://reader:secret@127.0.0.1:9/out"  # nothing listens on port 9: refused at once
    with pytest.raises(NotFoundError, match=r"^http://reader@127\.0\.0\.1:9/out: no split 'nosuch'"):
        zarr_layout.open_split(url, manifest, "nosuch", None)
    with pytest.raises(
        OutputError, match=r"^http://reader@127\.0\.0\.1:9/out/ssmspine\.zarr/train: not a Zarr group"
    ) as e:
        zarr_layout.open_split(url, manifest, "train", None)
    assert "secret" not in str(e.value)
