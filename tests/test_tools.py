"""``info`` against the manifest and the files on disk; ``show`` pixels where labels and landmarks
should be; the benchmark report from small fake figures."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import OutputError
from pipeline.schema import LABEL_NAMES
from pipeline.store.manifest import read_manifest
from pipeline.tools.info import info
from pipeline.tools.info_text import format_info
from pipeline.tools.show import pick_indices, picture_fields, show
from pipeline.tools.show.figures import grid_size, render_grid, render_sample, sample_figure, sample_size
from pipeline.tools.show.pictures import (
    LABEL_COLOURS,
    OVERLAY_ALPHA,
    display_image,
    label_colours_rgb,
    label_map,
    overlay_rgb,
)
from pipeline.tools.show.records import read_wds_records, read_zarr_records
from pipeline.verify.consistency import ManifestCheck, check_output

from conftest import assert_bit_exact, copy_output, manifest_json, write_manifest_json

# ------------------------------------------------------------------------------ helpers


def _files_bytes(folder: Path) -> int:
    return sum(os.path.getsize(Path(root) / name) for root, _, names in os.walk(folder) for name in names)


def _tar_field_bytes(path: Path) -> dict[str, int]:
    """Member sizes per field, read from the tar itself (not from the manifest)."""
    sizes: dict[str, int] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            field = member.name.split(".")[1]
            sizes[field] = sizes.get(field, 0) + member.size
    return sizes


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def _png_coords(fig, axes_label: str, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PNG (row, column) of image pixel centres (rows, cols) in the panel ``axes_label`` of ``fig``."""
    ax = next(a for a in fig.axes if a.get_label() == axes_label)
    display = ax.transData.transform(np.column_stack([cols, rows]).astype(float))
    height = int(round(fig.get_size_inches()[1] * fig.dpi))
    return np.floor(height - display[:, 1]).astype(int), np.floor(display[:, 0]).astype(int)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    out = mask.copy()
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            out |= np.roll(np.roll(mask, dy, axis=0), dx, axis=1)
    return out


@pytest.fixture(scope="module")
def record(converted):
    return read_zarr_records(converted, "train", [1])[0]


# --------------------------------------------------------------------------------- info


def test_info_matches_manifest_and_files(converted, train_zip, test_zip):
    data = info(converted)
    assert json.loads(json.dumps(data)) == data  # JSON-able as it is
    manifest = manifest_json(converted)
    store, wds = converted / "ssmspine.zarr", converted / "wds"

    assert data["schema"].keys() == manifest["schema"].keys()
    for field, spec in manifest["schema"].items():
        assert data["schema"][field]["shape"] == spec["shape"] and data["schema"][field]["dtype"] == spec["dtype"]
    assert data["source_bytes"] == train_zip.stat().st_size + test_zip.stat().st_size
    assert data["zarr_bytes"] == _files_bytes(store)
    assert data["wds_bytes"] == _files_bytes(wds)
    assert data["ratio_to_source"]["zarr"] == pytest.approx(data["zarr_bytes"] / data["source_bytes"])
    assert data["samples"] == 15 and data["patients"] == 3

    assert data["splits"].keys() == manifest["splits"].keys()
    zips = {"train": train_zip, "test": test_zip}
    for split, entry in manifest["splits"].items():
        got = data["splits"][split]
        assert got["samples"] == entry["samples"] == len(entry["keys"])
        assert got["patients"] == len(set(entry["patient"]))
        # each archive feeds one split here, so its share of the sources is the whole zip
        assert got["source_bytes"] == zips[split].stat().st_size
        files = [s["file"] for s in entry["shards"]]
        assert got["shards"]["count"] == len(files) > 0
        assert got["shards"]["bytes"] == [(converted / f).stat().st_size for f in files]
        assert got["shards"]["bytes"] == [s["bytes"] for s in entry["shards"]]
        assert got["shards"]["samples"] == [len(s["keys"]) for s in entry["shards"]]
        assert got["wds_bytes"] == sum(got["shards"]["bytes"])
        assert got["zarr_bytes"] == _files_bytes(store / split)
        in_tars: dict[str, int] = {}
        for f in files:
            for field, n in _tar_field_bytes(converted / f).items():
                in_tars[field] = in_tars.get(field, 0) + n
        for field, spec in data["schema"].items():
            sizes = got["fields"][field]
            assert sizes["zarr"] == _files_bytes(store / split / field)
            assert sizes["wds"] == in_tars[field]
            assert sizes["decoded"] == entry["samples"] * spec["sample_bytes"]
        assert got["wds_overhead_bytes"] == got["wds_bytes"] - sum(in_tars.values())
    shard_count = sum(len(entry["shards"]) for entry in manifest["splits"].values())
    assert check_output(converted) == ManifestCheck(checksums=False, shards=shard_count, problems=())
    assert check_output(converted, checksums=True).ok


def _format_info(out: Path) -> str:
    return format_info(info(out), check_output(out).to_json())


def test_format_info_names_every_split_and_field(converted):
    text = _format_info(converted)
    splits = read_manifest(converted).splits
    shards = {split: len(entry.shards) for split, entry in splits.items()}
    assert shards["train"] > 1 and shards["test"] > 1
    assert f"split train: 12 samples, 2 patient textures, {shards['train']} shards" in text
    assert f"split test: 3 samples, 1 patient texture, {shards['test']} shards" in text
    for field in read_manifest(converted).schema:
        assert f"\n  {field} " in text
    assert f"manifest: OK ({sum(shards.values())} shards" in text and "--check adds sha256" in text


def _grow(out: Path) -> str:
    with open(out / "wds/train-000001.tar", "ab") as file:
        file.write(b"\0" * 512)
    return "wds/train-000001.tar: "


def _remove(out: Path) -> str:
    (out / "wds/train-000002.tar").unlink()
    return "wds/train-000002.tar: missing"


def _stray(out: Path) -> str:
    (out / "wds/train-000099.tar").write_bytes((out / "wds/train-000000.tar").read_bytes())
    return "wds/train-000099.tar: a tar shard the manifest does not list"


def _zarr(out: Path) -> str:
    (out / "ssmspine.zarr/test/label/zarr.json").unlink()
    return "ssmspine.zarr/test/label: no readable zarr.json"


def _payload_past_the_end(out: Path) -> str:
    manifest = manifest_json(out)
    shard = manifest["splits"]["train"]["shards"][1]
    shard["payloads"][0][-2] = shard["bytes"]  # the last field's bytes start where the file ends
    write_manifest_json(out, manifest)
    return f"{shard['file']}: the payload byte ranges of {shard['keys'][0]} do not fit the schema or the file"


@pytest.mark.parametrize("damage", [_grow, _remove, _stray, _zarr, _payload_past_the_end])
def test_info_reports_damage(converted, tmp_path, damage):
    out = copy_output(converted, tmp_path)
    expected = damage(out)
    check = check_output(out)
    assert not check.ok
    assert any(p.startswith(expected) for p in check.problems), check.problems
    assert "problem(s)" in _format_info(out)


def test_info_checksums_only_with_check(converted, tmp_path):
    out = copy_output(converted, tmp_path)
    path = out / "wds/test-000000.tar"
    data = bytearray(path.read_bytes())
    data[700] ^= 0xFF  # same size, other bytes: only the checksum can tell
    path.write_bytes(bytes(data))
    assert check_output(out).ok
    check = check_output(out, checksums=True)
    assert check.problems == ("wds/test-000000.tar: sha256 differs from the manifest (altered after conversion)",)


def test_info_and_wds_reads_with_a_rejected_member(converted, tmp_path):
    """A member rejected by its task (``--skip-bad``) leaves an empty Zarr row, not a shift."""
    out = copy_output(converted, tmp_path)
    manifest = manifest_json(out)
    entry = manifest["splits"]["train"]
    for shard in entry["shards"]:
        shard["rows"] = list(range(shard["start"], shard["start"] + len(shard["keys"])))
    shard, drop = entry["shards"][1], 1
    key = shard["keys"].pop(drop)
    shard["payloads"].pop(drop)
    shard["rows"].pop(drop)
    for digests in shard["digests"].values():
        digests.pop(drop)
    position = entry["keys"].index(key)
    rejection = {
        "archive": "SSMSpine_Train.zip",
        "member": "Train/p01/aug6.pt",
        "key": key,
        "split": "train",
        "reason": "test",
    }
    shard["rejected"], manifest["rejected"] = [rejection], [rejection]
    for name in ("keys", "patient", "aug", "members"):
        entry[name].pop(position)
    entry["samples"] -= 1
    entry["rows"] = [row for s in entry["shards"] for row in s["rows"]]
    write_manifest_json(out, manifest)

    data = info(out)
    assert check_output(out).problems == ()
    assert data["rejected"] == data["splits"]["train"]["rejected"] == 1 and data["splits"]["train"]["samples"] == 11
    assert "1 member rejected" in _format_info(out)
    [(got_key, fields)] = read_wds_records(out, "train", [position], ["img"])
    [(expected_key, expected)] = read_wds_records(converted, "train", [position + 1], ["img"])
    assert got_key == expected_key == entry["keys"][position]
    assert_bit_exact(fields["img"], expected["img"], got_key)
    intact = entry["shards"][0]
    intact["rows"][0] = intact["rows"][1]
    entry["rows"] = [row for s in entry["shards"] for row in s["rows"]]
    write_manifest_json(out, manifest)
    assert any("rows are not" in p for p in check_output(out).problems)


def test_info_of_an_unfinished_output_is_an_output_error(tmp_path):
    with pytest.raises(OutputError, match="no manifest"):
        info(tmp_path)


# --------------------------------------------------------------------------------- show


def test_show_writes_png_of_expected_size(converted, tmp_path):
    path = show(converted, "train", index=1, path=tmp_path / "deep" / "sample.png")
    assert path == tmp_path / "deep" / "sample.png"
    assert Image.open(path).size == sample_size(512) == (3 * 512 + 32, 2 * (512 + 26) + 24)


def test_show_panels_are_the_images_at_native_resolution(record, tmp_path):
    key, fields = record
    path = render_sample(record, tmp_path / "s.png")
    fig = sample_figure(record)
    png = _pixels(path)
    rows, cols = np.mgrid[0:512, 0:512].reshape(2, -1)
    for field in ("img", "img_corrected", "img_equalized"):
        r, c = _png_coords(fig, field, rows, cols)
        expected = np.round(display_image(fields[field]) * 255).astype(int).reshape(-1)
        assert (np.abs(png[r, c, 0] - expected) <= 2).all(), field  # the grey colormap's 256 levels


def test_show_draws_labels_in_their_colours_and_only_there(record, tmp_path):
    key, fields = record
    with_labels = _pixels(render_sample(record, tmp_path / "a.png"))
    unlabelled = {f: a for f, a in fields.items() if f not in ("label", "mask", "bone_mask", "disk_mask")}
    without = _pixels(render_sample((key, unlabelled), tmp_path / "b.png"))
    fig = sample_figure(record)
    label = label_map(fields)
    assert set(np.unique(label)) == set(range(12))
    palette = label_colours_rgb()
    grey = display_image(fields["img_corrected"])
    expected = np.round(overlay_rgb(fields["img_corrected"], label) * 255).astype(int)
    centroids = [np.argwhere(label == v).mean(axis=0) for v in range(1, 12)]
    for value in range(1, 12):
        rows, cols = np.nonzero(label == value)
        r, c = _png_coords(fig, "labels", rows, cols)
        assert np.mean((with_labels[r, c] != without[r, c]).any(axis=1)) > 0.99, LABEL_NAMES[value]
        # away from the names written at the centroids: the grey image blended with this label's colour
        keep = np.all([np.maximum(np.abs(rows - y), np.abs(cols - x)) > 12 for y, x in centroids], axis=0)
        rows, cols, r, c = rows[keep], cols[keep], r[keep], c[keep]
        assert len(rows) > 20
        assert (with_labels[r, c] != without[r, c]).any(axis=1).all(), LABEL_NAMES[value]
        assert (np.abs(with_labels[r, c] - expected[rows, cols]) <= 2).all(), LABEL_NAMES[value]
        observed = np.median(with_labels[r, c], axis=0) / 255
        base = (1 - OVERLAY_ALPHA) * np.median(grey[rows, cols])
        blends = [base + OVERLAY_ALPHA * palette[v] for v in range(1, 12)]
        assert 1 + int(np.argmin([np.abs(observed - b).sum() for b in blends])) == value, LABEL_NAMES[value]
    far = ~_dilate(label > 0, 12)  # beyond the labels and the names written on them
    rows, cols = np.nonzero(far)
    r, c = _png_coords(fig, "labels", rows, cols)
    assert (with_labels[r, c] == without[r, c]).all()


def test_show_draws_landmarks_where_they_are(record, tmp_path):
    key, fields = record
    with_marks = _pixels(render_sample(record, tmp_path / "a.png"))
    without = _pixels(
        render_sample((key, {f: a for f, a in fields.items() if f not in ("bone", "disk")}), tmp_path / "b.png")
    )
    fig = sample_figure(record)
    points = np.concatenate([fields["bone"].reshape(-1, 2), fields["disk"].reshape(-1, 2)])
    cols, rows = np.round(points).astype(int).T
    r, c = _png_coords(fig, "landmarks", rows, cols)
    assert np.mean((with_marks[r, c] != without[r, c]).any(axis=1)) > 0.95
    near = np.zeros((512, 512), dtype=bool)
    near[rows, cols] = True
    rows, cols = np.nonzero(~_dilate(near, 4))
    r, c = _png_coords(fig, "landmarks", rows, cols)
    assert (with_marks[r, c] == without[r, c]).all()
    # and the label panel is untouched by landmarks
    rows, cols = np.mgrid[0:512, 0:512].reshape(2, -1)
    r, c = _png_coords(fig, "labels", rows, cols)
    assert (with_marks[r, c] == without[r, c]).all()


def test_legend_names_all_eleven_structures_in_distinct_colours(record):
    fig = sample_figure(record)
    texts = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert texts == [
        "L1",
        "L2",
        "L3",
        "L4",
        "L5",
        "S1",
        "D1 (L1/L2)",
        "D2 (L2/L3)",
        "D3 (L3/L4)",
        "D4 (L4/L5)",
        "D5 (L5/S1)",
    ]
    palette = label_colours_rgb()[1:]
    distances = np.abs(palette[:, None] - palette[None]).sum(axis=2)
    assert distances[~np.eye(11, dtype=bool)].min() > 0.25
    assert len({name for name, _ in LABEL_COLOURS.values()}) == 11


def test_show_from_wds_reads_the_same_sample(converted, tmp_path):
    rows = [0, 5, 11]
    fields = picture_fields(read_manifest(converted).schema)
    from_zarr = read_zarr_records(converted, "train", rows, fields)
    from_wds = read_wds_records(converted, "train", rows, fields)
    for (zkey, zarr_fields), (wkey, wds_fields) in zip(from_zarr, from_wds):
        assert zkey == wkey
        assert zarr_fields.keys() == wds_fields.keys() == set(fields)
        for field in fields:
            assert_bit_exact(wds_fields[field], zarr_fields[field], f"{zkey}.{field}")
    a = show(converted, "test", key="p81_aug002", path=tmp_path / "zarr.png")
    b = show(converted, "test", key="p81_aug002", from_wds=True, path=tmp_path / "wds.png")
    differ = (_pixels(a) != _pixels(b)).any(axis=2)
    width = sample_size()[0]
    assert differ.any() and not differ[:, : width * 2 // 3].any()  # only the "read from ..." line


def test_show_grid(converted, tmp_path):
    path = show(converted, "train", grid=4, path=tmp_path / "grid.png")
    assert Image.open(path).size == grid_size(4, 4)
    path = show(converted, "test", grid=50, from_wds=True, path=tmp_path / "all.png")
    assert Image.open(path).size == grid_size(3, 3)  # a split of 3 samples


@pytest.mark.parametrize(
    ("key", "index", "grid", "indices"),
    [
        (None, None, None, [0]),
        (None, 3, None, [3]),
        (None, -1, None, [11]),
        ("p02_aug001", None, None, [6]),
        (None, None, 4, [0, 4, 7, 11]),
        (None, 10, 4, [10, 11]),
        ("p01_aug002", None, 2, [1, 2]),
        (None, None, 20, list(range(12))),
    ],
)
def test_pick_indices(converted, key, index, grid, indices):
    keys = read_manifest(converted).splits["train"].keys
    assert pick_indices(keys, "train", key, index, grid) == indices


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"split": "val"}, OutputError, "no split 'val'"),
        ({"key": "p09_aug001"}, OutputError, "no sample 'p09_aug001'"),
        ({"index": 12}, OutputError, "out of range"),
        ({"key": "p01_aug001", "index": 0}, ValueError, "not both"),
        ({"grid": 0}, ValueError, "at least 1"),
    ],
)
def test_show_refuses_bad_requests(converted, tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        show(converted, **{"split": "train", **kwargs}, path=tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


# ------------------------------------------------------------------- label maps and odd data


def _reference_label(shape=(16, 16)) -> np.ndarray:
    label = np.zeros(shape, dtype=np.int64)
    for value in range(1, 12):
        label[value, 2 : 2 + value] = value
    return label


@pytest.mark.parametrize("dtype", ["int64", "uint8", "int32", "float32", "float64"])
@pytest.mark.parametrize("leading", [True, False])
def test_label_map_of_any_dtype(dtype, leading):
    reference = _reference_label()
    stored = reference.astype(dtype)
    assert_bit_exact(label_map({"label": stored[None] if leading else stored}), reference, "label")


@pytest.mark.parametrize("dtype", ["bool", "uint8", "float32"])
@pytest.mark.parametrize("split_masks", [False, True])
def test_label_map_from_masks_without_label(dtype, split_masks):
    reference = _reference_label()
    masks = np.stack([reference == v for v in range(1, 12)]).astype(dtype)
    fields = {"bone_mask": masks[:6], "disk_mask": masks[6:]} if split_masks else {"mask": masks}
    assert_bit_exact(label_map(fields), reference, "label from masks")
    assert label_map({}) is None


def test_odd_records_still_render(tmp_path):
    """Other dtypes than the release's, values outside [0, 1], no landmarks, no labels."""
    image = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 7
    fields = {
        "img": image,
        "img_corrected": image.astype(np.float16),
        "label": _reference_label((64, 64))[None].astype(np.float32),
        "bone": np.full((6, 236, 2), 10, dtype=np.int16),
    }
    record = ("p01_aug001", fields)
    path = render_sample(record, tmp_path / "odd.png", panel=128)
    assert Image.open(path).size == sample_size(128)
    assert render_grid([record, ("x", {})], tmp_path / "grid.png", panel=64).exists()


# --------------------------------------------------------------------------------- CLI


def test_cli_info_json_and_show(converted, tmp_path, capsys):
    from pipeline import cli

    assert cli.main(["info", str(converted), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["samples"] == 15 and data["check"]["ok"]
    assert cli.main(["info", str(converted), "--check"]) == 0
    assert "manifest: OK" in capsys.readouterr().out
    out = tmp_path / "s.png"
    assert cli.main(["show", str(converted), "--split", "test", "--index", "1", "-o", str(out), "--from-wds"]) == 0
    assert Image.open(out).size == sample_size()
    assert cli.main(["show", str(converted), "--key", "nope", "-o", str(out)]) == 2


def test_wds_records_refuse_a_manifest_whose_byte_ranges_point_at_another_member(converted, tmp_path):
    """A well-formed manifest with stale offsets: the tar header in front of the range names another member."""
    out = copy_output(converted, tmp_path)
    done = manifest_json(out)
    shard = done["splits"]["train"]["shards"][0]
    first, second = shard["payloads"][0], shard["payloads"][1]
    shard["payloads"][0] = second  # sample 0's ranges now lead to sample 1's members
    write_manifest_json(out, done)
    key = shard["keys"][0]
    with pytest.raises(OutputError, match=rf"{shard['file']}: no member {key}\.img\.npy\.blosc at byte"):
        read_wds_records(out, "train", [0], ["img"])
    shard["payloads"][0] = first
    write_manifest_json(out, done)
    assert read_wds_records(out, "train", [0], ["img"])[0][0] == key
