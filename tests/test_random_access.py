"""Random access: ZarrDataset's fast path against zarr-python and tensorstore, lookups, batches, workers, open_zarr."""

from __future__ import annotations

import dataclasses
import pickle
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import dask.array
import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader, DistributedSampler, Subset, default_collate
from zarr.codecs import BloscCodec, BytesCodec, GzipCodec, ShardingCodec, ZstdCodec

from pipeline.errors import OutputError
from pipeline.read import zarr_dataset
from pipeline.read.batch_memory.memory import BUSY, FREE
from pipeline.read.zarr_dataset import ZarrDataset
from pipeline.schema import spec_of
from pipeline.store import zarr_layout, zarr_store
from pipeline.store.codecs import CANDIDATES
from pipeline.store.manifest import ShardEntry, SplitEntry, read_manifest, write_manifest
from pipeline.store.zarr_fast_layout import fast_layout
from pipeline.tools.xarray_view import dask_step, open_zarr

from conftest import assert_bit_exact, copy_output, tensorstore_read

#: The variant output: 7 samples in shards of 3 (the last one partial), other dtypes than the
#: release's, and a different Blosc configuration per field.
VARIANT_SAMPLES = 7
VARIANT_SHARD = 3
VARIANT_DTYPES = {
    "img": "float64",
    "img_corrected": "float16",
    "img_equalized": "uint16",
    "label": "int32",
    "mask": "bool",
    "shape": "float32",
    "bone": "int16",
    "bone_mask": "int8",
    "disk": "uint32",
    "disk_mask": "uint64",
}
EMPTY_MASK_ROW = 4  # mask of this sample is all False: its chunk is never written
EMPTY_SHARD_FIELD = "bone_mask"  # all zero in shard 0: its shard file is never written


def _zarr_read(out: Path, split: str, field: str, row: int) -> np.ndarray:
    return zarr_layout.open_array(out, split, field)[row]


def _full_read(out: Path, split: str, field: str) -> np.ndarray:
    return zarr_layout.open_array(out, split, field)[:]


def _cast(values: np.ndarray, dtype: str) -> np.ndarray:
    if np.dtype(dtype).kind in "iu" and values.dtype.kind == "f":
        info = np.iinfo(dtype)
        values = np.clip(np.round(values * 100), info.min, info.max)
    return values.astype(dtype)


@pytest.fixture(scope="module")
def variant(tmp_path_factory, converted) -> tuple[Path, dict[str, np.ndarray]]:
    """An output laid out by ``zarr_store`` but written by zarr-python, with shards of several
    samples, other dtypes and codecs, a chunk and a whole shard equal to the fill value (which
    zarr-python leaves unwritten); with the data written into it."""
    out = tmp_path_factory.mktemp("variant") / "out"
    manifest = read_manifest(converted)
    train = manifest.splits["train"]
    n = VARIANT_SAMPLES
    data = {f: _cast(_full_read(converted, "train", f)[:n], dtype) for f, dtype in VARIANT_DTYPES.items()}
    data["mask"][EMPTY_MASK_ROW] = False
    data[EMPTY_SHARD_FIELD][:VARIANT_SHARD] = 0
    schema = {f: spec_of(values[0]) for f, values in data.items()}
    encodings = {f: CANDIDATES[k % len(CANDIDATES)] for k, f in enumerate(schema)}
    zarr_store.create_split(
        out,
        "train",
        schema,
        encodings,
        np.array(train.patient[:n]),
        np.array(train.aug[:n]),
        shard_samples=VARIANT_SHARD,
        attributes={"fields": list(schema)},
    )
    for f, values in data.items():  # zarr-python, unlike the conversion, skips chunks equal to the fill value
        zarr_layout.open_array(out, "train", f, mode="r+")[:] = values
    keys = train.keys[:n]
    shard = ShardEntry("train", 0, "wds/train-000000.tar", 0, keys, bytes=0, sha256="", rows=list(range(n)))
    split = SplitEntry(keys, list(range(n)), train.patient[:n], train.aug[:n], train.members[:n], [shard])
    write_manifest(out, dataclasses.replace(manifest, splits={"train": split}))
    return out, data


# ---------------------------------------------------------------------- bit-exact reads


@pytest.mark.parametrize("split", ["train", "test"])
def test_fast_path_equals_zarr_python_on_every_field(converted, split):
    ds = ZarrDataset(converted, split, compact=True)  # as stored, as zarr-python reads it
    assert ds.fast_fields == ds.fields == tuple(read_manifest(converted).schema)
    for row in range(len(ds)):
        key, record = ds.read_record(row)
        assert key == read_manifest(converted).splits[split].keys[row]
        for field, values in record.items():
            assert_bit_exact(values, _zarr_read(converted, split, field, row), f"{split}/{key}/{field}")


def test_variant_has_the_layouts_it_is_meant_to_test(variant):
    out, _ = variant
    layout = fast_layout(zarr_layout.open_array(out, "train", "mask"))
    assert layout is not None and layout.shard_samples == VARIANT_SHARD
    raw = Path(layout.shard_path(EMPTY_MASK_ROW // VARIANT_SHARD)).read_bytes()
    index = np.frombuffer(raw[-(16 * VARIANT_SHARD + 4) : -4], "<u8").reshape(-1, 2)
    assert (index[EMPTY_MASK_ROW % VARIANT_SHARD] == 2**64 - 1).all(), "the empty mask chunk was written"
    assert not zarr_layout.shard_file(out, "train", EMPTY_SHARD_FIELD, 0, 4).exists()
    assert zarr_layout.shard_file(out, "train", EMPTY_SHARD_FIELD, 1, 4).exists()


def test_fast_path_equals_written_data_zarr_python_and_tensorstore_on_other_dtypes(variant):
    out, data = variant
    ds = ZarrDataset(out)
    assert ds.fast_fields == tuple(VARIANT_DTYPES)
    for row in range(len(ds)):
        _, record = ds.read_record(row)
        for field, values in record.items():
            what = f"row {row} {field} ({VARIANT_DTYPES[field]})"
            assert_bit_exact(values, data[field][row], what)
            assert_bit_exact(values, _zarr_read(out, "train", field, row), what)
    for field in ("img_corrected", "mask", EMPTY_SHARD_FIELD, "disk"):
        for row in (0, EMPTY_MASK_ROW, VARIANT_SAMPLES - 1):
            assert_bit_exact(ds.read_record(row)[1][field], tensorstore_read(out, "train", field, row), field)


def test_tensorstore_agrees_on_the_release_layout(converted):
    ds = ZarrDataset(converted, fields=("img", "label", "mask"))
    for row in (0, len(ds) - 1):
        for field, values in ds.read_record(row)[1].items():
            assert_bit_exact(values, tensorstore_read(converted, "train", field, row), field)


#: Arrays rewritten in another layout: which the fast path must take, and which it must leave
#: to zarr-python. Samples 12, so shards of 5 leave a partial last shard.
OTHER_LAYOUTS = {
    # fast: raw (uncompressed) chunks, read with preadv straight into the array
    "img_corrected": (True, dict(chunks=(1, 512, 512), shards=(5, 512, 512), compressors=None)),
    # fast: "." chunk key separator
    "img_equalized": (
        True,
        dict(
            chunks=(1, 512, 512),
            shards=(5, 512, 512),
            compressors=BloscCodec(),
            chunk_key_encoding={"name": "default", "separator": "."},
        ),
    ),
    # fast: index at the start of the shard
    "mask": (
        True,
        dict(
            chunks=(5, 11, 512, 512),
            compressors=None,
            serializer=ShardingCodec(
                chunk_shape=(1, 11, 512, 512), codecs=[BytesCodec(), BloscCodec(cname="lz4")], index_location="start"
            ),
        ),
    ),
    # fast: index without crc32c
    "label": (
        True,
        dict(
            chunks=(4, 1, 512, 512),
            compressors=None,
            serializer=ShardingCodec(
                chunk_shape=(1, 1, 512, 512), codecs=[BytesCodec(), BloscCodec()], index_codecs=[BytesCodec()]
            ),
        ),
    ),
    # zarr-python: sharded, another compressor
    "shape": (False, dict(chunks=(1, 1696, 2), shards=(4, 1696, 2), compressors=ZstdCodec(level=3))),
    # zarr-python: Blosc, but one file per chunk
    "bone": (False, dict(chunks=(1, 6, 236, 2), compressors=BloscCodec(cname="lz4"))),
    # zarr-python: another compressor, several samples per chunk
    "disk": (False, dict(chunks=(2, 5, 176, 2), compressors=GzipCodec())),
}


def test_other_layouts_read_fast_or_through_zarr_python(converted, tmp_path):
    out = copy_output(converted, tmp_path)
    expected = {f: _full_read(converted, "train", f) for f in OTHER_LAYOUTS}
    group = zarr.open_group(zarr_layout.store_path(out) / "train", mode="r+", zarr_format=3)
    for field, (_, spec) in OTHER_LAYOUTS.items():
        values = expected[field]
        del group[field]
        group.create_array(field, shape=values.shape, dtype=values.dtype, **spec)[:] = values
    ds = ZarrDataset(out)
    assert set(ds.fields) - set(ds.fast_fields) == {f for f, (fast, _) in OTHER_LAYOUTS.items() if not fast}
    assert "img" in ds.fast_fields
    for row in range(len(ds)):
        _, record = ds.read_record(row)
        for field in OTHER_LAYOUTS:
            assert_bit_exact(record[field], expected[field][row], f"{row} {field}")
    batch = default_collate(ds.__getitems__(range(len(ds))))
    for field in OTHER_LAYOUTS:
        assert_bit_exact(batch[field].numpy(), expected[field], f"batched {field}")


# ---------------------------------------------------------------------- the dataset


def test_items_are_tensors_of_the_requested_fields_only(converted, monkeypatch):
    ds = ZarrDataset(converted, fields=("img", "label"))
    from pipeline.read import zarr_fast

    opened = []
    original = zarr_fast.ProcessState.shard
    monkeypatch.setattr(
        zarr_fast.ProcessState, "shard", lambda self, layout, path: opened.append(path) or original(self, layout, path)
    )
    item = ds[5]
    assert set(item) == {"__key__", "__pad__", "img", "label"} and item["__pad__"] is False
    assert item["__key__"] == ds.keys[5]
    assert isinstance(item["img"], torch.Tensor) and item["img"].dtype == torch.float32
    assert item["label"].shape == (1, 512, 512) and item["label"].dtype == torch.int64
    assert opened and {Path(p).relative_to(zarr_layout.store_path(converted) / "train").parts[0] for p in opened} == {
        "img",
        "label",
    }
    assert set(ZarrDataset(converted, fields="img")[0]) == {"__key__", "__pad__", "img"}


def test_lookup_by_patient_aug_and_key(converted):
    ds = ZarrDataset(converted, fields=("shape",))
    info = read_manifest(converted).splits["train"]
    assert ds.keys == tuple(info.keys) and len(ds) == 12
    assert ds.patients.tolist() == info.patient and ds.augs.tolist() == info.aug
    row = ds.index_of(2, 3)
    assert ds.keys[row] == "p02_aug003" and ds.index_of(key="p02_aug003") == row
    assert ds.get(patient=2, aug=3)["__key__"] == "p02_aug003"
    assert ds.indices(patient=1) == [i for i, p in enumerate(info.patient) if p == 1]
    assert [ds.keys[i] for i in ds.indices(patient=[1, 2], aug=6)] == ["p01_aug006", "p02_aug006"]
    assert Subset(ds, ds.indices(patient=2))[0]["__key__"] == "p02_aug001"
    assert ds[-1]["__key__"] == ds.keys[-1]
    with pytest.raises(KeyError, match="patient 3, aug 1"):
        ds.index_of(3, 1)
    with pytest.raises(KeyError):
        ds.index_of(key="p09_aug001")


def test_errors_are_clear(converted, tmp_path):
    ds = ZarrDataset(converted, fields=("shape",))
    for bad in (12, -13):
        with pytest.raises(IndexError, match="out of range"):
            ds[bad]
    with pytest.raises(OutputError, match="no split 'val'"):
        ZarrDataset(converted, "val")
    with pytest.raises(OutputError, match=r"no field\(s\) \['imgg'\]"):
        ZarrDataset(converted, fields=("img", "imgg"))
    with pytest.raises(OutputError, match="manifest"):
        ZarrDataset(tmp_path)
    with pytest.raises(OutputError, match="manifest"):
        open_zarr(tmp_path)


def test_damaged_shard_index_is_an_error_naming_the_file(converted, tmp_path):
    out = copy_output(converted, tmp_path)
    layout = fast_layout(zarr_layout.open_array(out, "train", "img"))
    last = layout.shape[0] - 1
    assert last // layout.shard_samples > 0, "the fixture has a single shard"
    path = Path(layout.shard_path(last // layout.shard_samples))
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF  # the last byte of the index, just before its crc32c
    path.write_bytes(bytes(raw))
    ds = ZarrDataset(out, fields=("img",))
    assert_bit_exact(ds[0]["img"].numpy(), _zarr_read(converted, "train", "img", 0), "an intact shard")
    with pytest.raises(OutputError, match=f"{path}.*crc32c"):
        ds[last]


def test_pickles_without_process_state_and_reads_the_same(converted):
    ds = ZarrDataset(converted, fields=("img", "mask"))
    first = ds[0]
    copy = pickle.loads(pickle.dumps(ds))
    assert copy._local is None and len(pickle.dumps(ds)) < 10_000
    again = copy[0]
    for field in ("img", "mask"):
        assert torch.equal(first[field], again[field])


@pytest.mark.slow
def test_dataloader_workers_and_distributed_sampler_cover_each_rank(converted):
    ds = ZarrDataset(converted, fields=("label", "shape"))
    reference = {ds.keys[i]: ds[i] for i in range(len(ds))}  # also fills this process's state before the fork
    seen = []
    for rank in (0, 1):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=7)
        expected = [ds.keys[i] for i in sampler]
        loader = DataLoader(ds, batch_size=2, sampler=sampler, num_workers=2, multiprocessing_context="fork")
        got = []
        for batch in loader:
            got.extend(batch["__key__"])
            for j, key in enumerate(batch["__key__"]):
                for field in ("label", "shape"):
                    assert torch.equal(batch[field][j], reference[key][field]), (rank, key, field)
        assert got == expected and len(got) == len(ds) // 2
        seen.extend(got)
    assert sorted(seen) == sorted(ds.keys)


# ---------------------------------------------------------------------- batches


def _assert_batch_equals_items(ds: ZarrDataset, batch: dict, indices: list[int], what: str) -> None:
    assert type(batch) is dict and batch["__key__"] == [ds.keys[i] for i in indices], what
    for j, i in enumerate(indices):
        item = ds[i]
        for field in ds.fields:
            assert_bit_exact(batch[field][j].numpy(), item[field].numpy(), f"{what}: {item['__key__']}.{field}")


@pytest.mark.parametrize("output", ["release", "variant"])
def test_batched_reads_equal_single_reads_and_collate_without_copies(converted, variant, output):
    """Every field and dtype, chunks and a shard left unwritten (fill value), indices in any order."""
    ds = ZarrDataset(converted) if output == "release" else ZarrDataset(variant[0])
    indices = [len(ds) - 1, 0, 4, -2, 4]
    samples = ds.__getitems__(indices)
    assert isinstance(samples, list) and len(samples) == len(indices)
    for sample, i in zip(samples, indices):
        item = ds[i]
        assert list(sample) == list(item) and sample["__key__"] == item["__key__"]
        for field in ds.fields:
            assert sample[field].dtype == item[field].dtype
            assert_bit_exact(sample[field].numpy(), item[field].numpy(), f"{item['__key__']}.{field}")
    batch = default_collate(samples)
    _assert_batch_equals_items(ds, batch, [i % len(ds) for i in indices], output)
    for field in ds.fields:  # the samples are rows of the batch's tensors: nothing was stacked
        assert batch[field][2].data_ptr() == samples[2][field].data_ptr()
    pickled = pickle.loads(ForkingPickler.dumps(samples))  # as a custom collate_fn may return them from a worker
    assert type(pickled) is list and [type(s) for s in pickled] == [dict] * len(indices)
    assert torch.equal(pickled[1][ds.fields[-1]], samples[1][ds.fields[-1]])
    with pytest.raises(IndexError, match="out of range"):
        ds.__getitems__([0, len(ds)])


def test_changed_samples_are_stacked_as_usual(converted):
    ds = ZarrDataset(converted, fields=("img", "shape"))
    samples = ds.__getitems__([3, 7])
    samples[1]["img"] = samples[1]["img"] + 1  # what a transform in a wrapper dataset might do
    batch = default_collate(samples)
    assert batch["__key__"] == [ds.keys[3], ds.keys[7]]
    assert torch.equal(batch["img"][0], ds[3]["img"]) and torch.equal(batch["img"][1], ds[7]["img"] + 1)
    assert torch.equal(batch["shape"], torch.stack([ds[3]["shape"], ds[7]["shape"]]))
    reordered = default_collate(ds.__getitems__([3, 7])[::-1])  # a plain list of the samples
    assert reordered["__key__"] == [ds.keys[7], ds.keys[3]] and torch.equal(reordered["img"][0], ds[7]["img"])


def test_worker_slots_are_freed_by_the_worker_unless_the_batch_was_shipped(converted, monkeypatch):
    """In a worker (faked here), a batch that a custom collate_fn consumed frees its slot once the
    worker drops it; a batch pickled to the main process is freed by that process instead."""
    monkeypatch.setattr(zarr_dataset, "get_worker_info", lambda: object())
    ds = ZarrDataset(converted, fields=("label",))
    samples = ds.__getitems__([1, 2])
    slot = samples.whole.slot
    stacked = torch.stack([s["label"] for s in samples])  # a custom collate_fn
    assert slot.header[0] == BUSY
    del samples
    assert slot.header[0] == FREE and torch.equal(stacked[1], ds[2]["label"])

    samples = ds.__getitems__([5, 6, 7])  # a larger batch: larger slots
    whole = default_collate(samples)
    assert whole.slot is not slot and whole.rows == 3
    payload = ForkingPickler.dumps(whole)  # what the DataLoader does with it
    slot = whole.slot
    del samples, whole
    assert slot.header[0] == BUSY, "freed by the worker although the main process may hold it"
    received = pickle.loads(payload)
    assert received["__key__"] == [ds.keys[i] for i in (5, 6, 7)]
    assert torch.equal(received["label"][2], ds[7]["label"])


def _collate_list(samples: list) -> list:
    return samples


@pytest.mark.slow
@pytest.mark.parametrize("context", ["in process", "fork", "spawn"])
def test_worker_batches_cover_each_rank_and_stay_valid_while_held(converted, context):
    """Persistent workers (or none) over three epochs of a DistributedSampler: every rank's indices
    exactly, in memory slots that are reused only after the main process dropped a batch."""
    ds = ZarrDataset(converted, fields=("img", "label", "mask"))
    workers = {} if context == "in process" else {"num_workers": 2, "multiprocessing_context": context}
    for rank in (0, 1):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=7)
        loader = DataLoader(ds, batch_size=2, sampler=sampler, persistent_workers=bool(workers), **workers)
        held = []
        for epoch in range(3):
            sampler.set_epoch(epoch)
            expected = [i for i in sampler]
            batches = list(loader)
            got = [ds.index_of(key=k) for b in batches for k in b["__key__"]]
            assert got == expected and len(got) == len(ds) // 2, (context, rank, epoch)
            if epoch == 0:  # hold a view of some batches, whole tensors of others
                held = [(b["img"][1:], b["__key__"][1:], "img") for b in batches[::2]]
                held += [(b["mask"], b["__key__"], "mask") for b in batches[1::2]]
            else:
                start = 0
                for b in batches:
                    _assert_batch_equals_items(ds, b, expected[start : start + len(b["__key__"])], context)
                    start += len(b["__key__"])
            del batches
        for tensor, keys, field in held:
            for row, key in enumerate(keys):
                assert torch.equal(tensor[row], ds[ds.index_of(key=key)][field]), f"held {key}.{field}"
        del loader
    # a custom collate_fn gets the samples as a list of dicts, as without __getitems__
    loader = DataLoader(ds, batch_size=3, collate_fn=_collate_list, **workers)
    samples = [s for b in loader for s in b]
    assert [s["__key__"] for s in samples] == list(ds.keys)
    assert all(type(s) is dict if workers else isinstance(s, dict) for s in samples)  # plain dicts from workers
    assert all(torch.equal(s["label"], ds[i]["label"]) for i, s in enumerate(samples))


# ---------------------------------------------------------------------- open_zarr


def test_open_zarr_mean_per_patient_is_lazy_and_exact(converted):
    views = open_zarr(converted)
    assert set(views) == {"train", "test"}
    train = views["train"]
    assert isinstance(train.img.data, dask.array.Array)
    assert train.key.values.tolist() == list(ZarrDataset(converted, fields=("shape",)).keys)
    means = train.img.groupby("patient").mean()
    assert isinstance(means.data, dask.array.Array), "groupby().mean() loaded the data"
    full = _full_read(converted, "train", "img")
    patients = zarr_layout.open_array(converted, "train", "patient")[:]
    for patient in (1, 2):
        expected = full[patients == patient].mean(axis=0)
        np.testing.assert_allclose(means.sel(patient=patient).values, expected, rtol=1e-6, atol=1e-7)
    sample = train.sel(key="p02_aug004")
    assert_bit_exact(sample.mask.values, _zarr_read(converted, "train", "mask", 9), "mask p02_aug004")
    assert train.mask.sel(structure="L3").shape == (12, 512, 512)


def test_open_zarr_chunks_follow_shards_and_fields(variant):
    out, data = variant
    view = open_zarr(out, "train", fields=("img", "bone_mask"))
    assert list(view.data_vars) == ["img", "bone_mask"]
    assert view.img.data.chunks[0] == (3, 3, 1)
    assert_bit_exact(view.bone_mask.values, data["bone_mask"], "bone_mask")
    assert view.img.groupby("aug").max().values.shape[0] == len(set(view.aug.values.tolist()))


@pytest.mark.slow
def test_spawned_workers_read_the_same(converted):
    """Spawn (and forkserver, the default from Python 3.14) pickle the dataset into each worker."""
    ds = ZarrDataset(converted, fields=("label",))
    sampler = DistributedSampler(ds, num_replicas=2, rank=1, shuffle=True, seed=7)
    loader = DataLoader(ds, batch_size=3, sampler=sampler, num_workers=2, multiprocessing_context="spawn")
    got = {key: label for batch in loader for key, label in zip(batch["__key__"], batch["label"])}
    assert list(got) == [ds.keys[i] for i in sampler]
    for key, label in got.items():
        assert torch.equal(label, ds[ds.index_of(key=key)]["label"])


@pytest.mark.parametrize(
    ("shard", "sample_nbytes", "limit", "step"),
    [
        (24, 1 << 20, 128 << 20, 24),  # the whole shard fits
        (161, 2 << 20, 128 << 20, 23),  # largest divisor within 64 samples
        (157, 2 << 20, 128 << 20, 64),  # prime: as many as fit
        (10, 256 << 20, 128 << 20, 1),  # one sample over the limit
    ],
)
def test_dask_chunks_stay_within_shards_and_memory(shard, sample_nbytes, limit, step):
    assert dask_step(shard, sample_nbytes, limit) == step
