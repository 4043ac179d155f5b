"""Tests of the synthetic SSMSpine generator: content plausibility, determinism, and that archives
have the release's layout and load under ``torch.load(weights_only=True)`` with an allow-list."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy._core.multiarray import _reconstruct

from pipeline.schema import BONE_NAMES, FIELD_SHAPES, FIELDS, IMAGE_FIELDS
from pipeline.tools.synth import (
    SynthConfig,
    cast_sample,
    equalize_hist,
    iter_members,
    make_sample,
    member_name,
    pt_bytes,
    write_archive,
    write_tree,
)
from pipeline.tools.synth import archive as archive_module
from pipeline.tools.synth.texture import patient_texture

CANONICAL_DTYPES = {
    "img": np.float32,
    "img_corrected": np.float32,
    "img_equalized": np.float32,
    "label": np.uint8,
    "mask": np.uint8,
    "shape": np.float64,
    "bone": np.float64,
    "bone_mask": np.uint8,
    "disk": np.float64,
    "disk_mask": np.uint8,
}
SAMPLES = [(1, 1), (2, 7), (5, 40), (80, 125)]
# Top to bottom: L1, D1, L2, D2, ..., L5, D5, S1, as indices into ``mask``.
CRANIOCAUDAL = [0, 6, 1, 7, 2, 8, 3, 9, 4, 10, 5]


@pytest.fixture(scope="module")
def sample() -> dict[str, np.ndarray]:
    return make_sample(1, 1)


def _allow_list(dtypes: list[np.dtype]) -> list:
    """What ``weights_only`` loading of numpy-valued files needs: ``_reconstruct`` under both its
    numpy 2 and numpy 1.x names, ndarray, dtype and the dtype classes actually present."""
    return [
        _reconstruct,
        (_reconstruct, "numpy.core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        *{type(np.dtype(d)) for d in dtypes},
    ]


def _load(data: bytes, config: SynthConfig) -> dict:
    dtypes = [config.image_dtype, config.mask_dtype, config.label_dtype, config.landmark_dtype]
    with torch.serialization.safe_globals(_allow_list(dtypes)):
        return torch.load(io.BytesIO(data), weights_only=True)


def _as_numpy(value: np.ndarray | torch.Tensor) -> np.ndarray:
    return value.numpy() if isinstance(value, torch.Tensor) else value


def _boundary_points(mask: np.ndarray) -> np.ndarray:
    """(x, y) of mask pixels with a 4-neighbour outside the mask."""
    m = mask.astype(bool)
    p = np.pad(m, 1)
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return np.argwhere(m & ~inner)[:, ::-1].astype(float)


# ---------------------------------------------------------------------------- content


def test_fields_shapes_and_canonical_dtypes(sample):
    assert list(sample) == list(FIELDS)
    for field, shape in FIELD_SHAPES.items():
        assert sample[field].shape == shape, field
        assert sample[field].dtype == CANONICAL_DTYPES[field], field
        assert sample[field].flags.c_contiguous, field


def test_deterministic_including_texture_cache():
    first = make_sample(3, 4, seed=7)
    patient_texture.cache_clear()
    second = make_sample(3, 4, seed=7)
    for field in FIELDS:
        assert first[field].tobytes() == second[field].tobytes(), field


def test_shapes_patients_and_seeds_differ(sample):
    other_shape = make_sample(1, 2)
    other_patient = make_sample(2, 1)
    other_seed = make_sample(1, 1, seed=1)
    for other in (other_shape, other_patient, other_seed):
        assert not np.array_equal(sample["img"], other["img"])
        assert not np.array_equal(sample["bone"], other["bone"])
    # Geometry belongs to the shape; the patient only shifts and scales it a little.
    patient_move = np.abs(sample["bone"] - other_patient["bone"]).mean()
    shape_move = np.abs(sample["bone"] - other_shape["bone"]).mean()
    assert 0 < patient_move < 20
    assert patient_move < shape_move


@pytest.mark.parametrize(("patient", "shape"), SAMPLES)
def test_label_and_masks_consistent(patient, shape):
    s = make_sample(patient, shape)
    label = s["label"][0]
    assert set(np.unique(label)) == set(range(12))
    for i in range(11):
        np.testing.assert_array_equal(s["mask"][i], (label == i + 1).astype(np.uint8))
        assert s["mask"][i].sum() > 300, i
    np.testing.assert_array_equal(s["bone_mask"], s["mask"][: len(BONE_NAMES)])
    np.testing.assert_array_equal(s["disk_mask"], s["mask"][len(BONE_NAMES) :])
    assert set(np.unique(s["mask"])) == {0, 1}


@pytest.mark.parametrize(("patient", "shape"), SAMPLES)
def test_anatomical_order(patient, shape):
    s = make_sample(patient, shape)
    rows = [np.nonzero(s["mask"][i])[0].mean() for i in CRANIOCAUDAL]
    assert rows == sorted(rows)
    contours = [s["bone"][i] if i < 6 else s["disk"][i - 6] for i in CRANIOCAUDAL]
    assert [c[:, 1].mean() for c in contours] == sorted(c[:, 1].mean() for c in contours)


@pytest.mark.parametrize(("patient", "shape"), SAMPLES)
def test_landmarks_trace_their_masks(patient, shape):
    s = make_sample(patient, shape)
    for i in range(11):
        contour = s["bone"][i] if i < 6 else s["disk"][i - 6]
        cx, cy = np.round(contour.mean(axis=0)).astype(int)
        assert s["mask"][i][cy, cx] == 1, i
        edge = _boundary_points(s["mask"][i])
        distance = np.sqrt(((contour[:, None] - edge[None]) ** 2).sum(-1)).min(axis=1)
        assert distance.max() < 2.5, i
    assert np.all((s["bone"] > 0) & (s["bone"] < 511))
    assert np.all((s["disk"] > 0) & (s["disk"] < 511))


def test_shape_is_bones_then_disc_subsample(sample):
    bones = sample["bone"].reshape(-1, 2)
    np.testing.assert_array_equal(sample["shape"][: len(bones)], bones)
    discs = sample["shape"][len(bones) :].reshape(5, -1, 2)
    for k in range(5):
        rows = [np.flatnonzero((sample["disk"][k] == point).all(axis=1)) for point in discs[k]]
        index = [r[0] for r in rows]
        assert all(len(r) == 1 for r in rows) and index == sorted(index)


@pytest.mark.parametrize(("patient", "shape"), SAMPLES[:2])
def test_images_normalized_and_distinct(patient, shape):
    s = make_sample(patient, shape)
    for field in IMAGE_FIELDS:
        image = s[field]
        assert np.isfinite(image).all(), field
        assert image.min() >= 0 and image.max() == 1, field
        assert image.std() > 0.1, field
    assert s["img"].min() == 0 and s["img_corrected"].min() == 0
    assert np.abs(s["img_corrected"] - s["img"]).mean() > 0.02
    assert np.abs(s["img_equalized"] - s["img"]).mean() > 0.02


def test_equalize_hist_matches_reference(sample):
    image = sample["img"]
    hist, edges = np.histogram(image, bins=256, range=(image.min(), image.max()))
    cdf = np.cumsum(hist) / hist.sum()
    reference = np.interp(image.ravel(), (edges[:-1] + edges[1:]) / 2, cdf).reshape(image.shape)
    np.testing.assert_allclose(equalize_hist(image), reference, atol=1e-6)


def test_bright_csf_and_discs_over_bone(sample):
    """Coarse T2 contrast: disc nuclei brighter than vertebral marrow on the bias-free image."""
    image, label = sample["img_corrected"], sample["label"][0]
    bone = np.median(image[(label >= 1) & (label <= 5)])
    disc = np.percentile(image[label >= 7], 90)
    assert disc > bone


# ---------------------------------------------------------------------------- storage


def test_member_names():
    assert member_name("Train", 1, 1) == "Train/p1/aug1.pt"
    assert member_name("SSMSpine_Test/Test", 12, 125) == "SSMSpine_Test/Test/p12/aug125.pt"
    config = SynthConfig(patients=2, shapes=3, first_patient=9)
    assert list(iter_members(config)) == [(f"Train/p{p}/aug{s}.pt", p, s) for p in (9, 10) for s in (1, 2, 3)]


@pytest.mark.parametrize("numpy_pickle", [1, 2])
def test_numpy_pickle_names_reconstruct(sample, numpy_pickle):
    config = SynthConfig(numpy_pickle=numpy_pickle)
    data = pt_bytes(cast_sample(sample, config), config)
    unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data)))
    module = "numpy.core.multiarray" if numpy_pickle == 1 else "numpy._core.multiarray"
    assert unsafe == {f"{module}._reconstruct", "numpy.ndarray", "numpy.dtype"}


@pytest.mark.parametrize("numpy_pickle", [1, 2])
def test_tensor_values_have_no_numpy_globals(sample, numpy_pickle):
    config = SynthConfig(values="tensor", numpy_pickle=numpy_pickle)
    data = pt_bytes(cast_sample(sample, config), config)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data)) == []


ROUND_TRIP_CONFIGS = [
    SynthConfig(),
    SynthConfig(numpy_pickle=2),
    SynthConfig(image_dtype="float64", mask_dtype="bool", label_dtype="float32", landmark_dtype="float32"),
    SynthConfig(image_dtype="float16", mask_dtype="int64", label_dtype="uint8"),
    SynthConfig(values="tensor"),
    SynthConfig(
        values="tensor", image_dtype="float16", mask_dtype="bool", label_dtype="float32", landmark_dtype="float32"
    ),
]


@pytest.mark.parametrize(
    "config",
    ROUND_TRIP_CONFIGS,
    ids=lambda c: f"{c.values}-{c.image_dtype}-{c.mask_dtype}-{c.label_dtype}-np{c.numpy_pickle}",
)
def test_round_trip_bit_exact(sample, config):
    cast = cast_sample(sample, config)
    kind = torch.Tensor if config.values == "tensor" else np.ndarray
    assert all(isinstance(v, kind) for v in cast.values())
    loaded = _load(pt_bytes(cast, config), config)
    assert list(loaded) == list(FIELDS)
    for field, value in cast.items():
        got = loaded[field]
        assert type(got) is type(value), field
        assert got.dtype == value.dtype and tuple(got.shape) == FIELD_SHAPES[field], field
        assert _as_numpy(got).tobytes() == _as_numpy(value).tobytes(), field
    assert _as_numpy(cast["mask"]).dtype == np.dtype(config.mask_dtype)


def test_pt_bytes_deterministic(sample):
    config = SynthConfig()
    cast = cast_sample(sample, config)
    assert pt_bytes(cast, config) == pt_bytes(cast, config)


ARCHIVE = SynthConfig(patients=2, shapes=2, first_patient=3, root="SSMSpine_Train/Train", junk=True, seed=5)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    return write_archive(tmp_path_factory.mktemp("zip") / "SSMSpine_Train.zip", ARCHIVE)


def test_archive_layout_with_junk(archive):
    root = ARCHIVE.root
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        infos = zf.infolist()
    assert names == [
        f"{root}/.DS_Store",
        f"{root}/p3/aug1.pt",
        f"__MACOSX/{root}/p3/._aug1.pt",
        f"{root}/p3/aug2.pt",
        f"{root}/p4/aug1.pt",
        f"{root}/p4/aug2.pt",
    ]
    assert [n for n in names if n.endswith(".pt") and "__MACOSX" not in n] == [m for m, _, _ in iter_members(ARCHIVE)]
    assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in infos)
    assert all(i.compress_size < i.file_size for i in infos if i.filename.endswith(".pt"))


def test_archive_members_load_and_match(archive):
    with zipfile.ZipFile(archive) as zf:
        for name, patient, shape in iter_members(ARCHIVE):
            data = zf.read(name)
            expected = cast_sample(make_sample(patient, shape, ARCHIVE.seed), ARCHIVE)
            assert data == pt_bytes(expected, ARCHIVE)
            loaded = _load(data, ARCHIVE)
            assert loaded["label"].dtype == np.int64
            np.testing.assert_array_equal(loaded["img"], expected["img"])
        junk = zf.read(f"__MACOSX/{ARCHIVE.root}/p3/._aug1.pt")
        assert not zipfile.is_zipfile(io.BytesIO(junk))


def test_write_tree_matches_archive(archive, tmp_path):
    tree = write_tree(tmp_path / "extracted", ARCHIVE)
    files = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file())
    with zipfile.ZipFile(archive) as zf:
        assert files == sorted(zf.namelist())
        for name in zf.namelist():
            assert (tree / name).read_bytes() == zf.read(name), name


def test_stored_archive_is_reproducible_and_clean(tmp_path):
    config = SynthConfig(shapes=1, compression="stored", values="tensor")
    first = write_archive(tmp_path / "a.zip", config)
    second = write_archive(tmp_path / "b.zip", config)
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as zf:
        (info,) = zf.infolist()
    assert info.filename == "Train/p1/aug1.pt"
    assert info.compress_type == zipfile.ZIP_STORED and info.compress_size == info.file_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip", "b.zip"]


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def broken(sample, config):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(archive_module, "pt_bytes", broken)  # where write_archive looks it up
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_archive(tmp_path / "x.zip", SynthConfig(shapes=1))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"patients": 0},
        {"shapes": 0},
        {"seed": -1},
        {"values": "list"},
        {"compression": "bzip2"},
        {"numpy_pickle": 3},
        {"image_dtype": "int16"},
        {"mask_dtype": "complex64"},
    ],
)
def test_config_rejects_nonsense(kwargs):
    with pytest.raises(ValueError):
        SynthConfig(**kwargs)
