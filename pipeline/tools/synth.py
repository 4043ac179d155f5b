"""Synthetic SSMSpine archives: the release's exact container format with plausible content.

Why: the real release (about 25 GB, password-protected) is not available where the converter is
developed and tested, yet the converter must be exercised on input that looks like it in every
respect that can break it: zip layout (``Train/p<patient>/aug<shape>.pt``, macOS junk members,
deflated or stored members), ``torch.save`` pickles of dicts of numpy arrays written by numpy 1.x
(which name ``numpy.core.multiarray._reconstruct``, a module numpy 2 renamed), various dtypes,
and image/mask/landmark content that compresses and looks like a mid-sagittal T2-weighted lumbar
MRI, so that sizes, timings and previews are meaningful.

Content model, mirroring how the release was made (a statistical shape model applied to patient
textures): the *geometry* (vertebrae, discs, landmarks, masks) is a function of ``(seed, shape)``
and only mildly of ``patient``; the *texture* (tissue intensities, marrow and bowel texture, bias
field, noise level, disc degeneration) is a function of ``(seed, patient)``. Every sample is
bit-identical for the same ``(patient, shape, seed)``. Image x is the column (anterior on the
left, posterior on the right) and y the row (cranial at the top); landmark coordinates are
pixel coordinates in that convention, with pixel centres at integer coordinates.
"""

from __future__ import annotations

import io
import math
import pickle
import types
import warnings
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import torch
from numpy._core.multiarray import _reconstruct
from PIL import Image, ImageDraw

from pipeline.atomic import AtomicFile
from pipeline.schema import (
    BONE_NAMES,
    DISC_NAMES,
    FIELD_SHAPES,
    IMAGE_FIELDS,
    LANDMARK_FIELDS,
    MASK_FIELDS,
    STORABLE_KINDS,
)

SIZE = FIELD_SHAPES["img"][0]
BONE_POINTS = FIELD_SHAPES["bone"][1]
DISC_POINTS = FIELD_SHAPES["disk"][1]
#: Disc points per disc in ``shape``: (1696 - 6 * 236) / 5.
DISC_POINTS_IN_SHAPE = (FIELD_SHAPES["shape"][0] - len(BONE_NAMES) * BONE_POINTS) // len(DISC_NAMES)

#: Every member of an archive gets this timestamp, so that archives are byte-reproducible.
MEMBER_DATE_TIME = (2024, 4, 2, 12, 0, 0)


@dataclass(frozen=True)
class SynthConfig:
    """What to generate and how to store it; the defaults mimic the release as far as known."""

    patients: int = 1
    shapes: int = 8
    seed: int = 0
    first_patient: int = 1
    root: str = "Train"
    values: Literal["numpy", "tensor"] = "numpy"
    image_dtype: str = "float32"
    mask_dtype: str = "uint8"
    label_dtype: str = "int64"
    landmark_dtype: str = "float64"
    compression: Literal["deflate", "stored"] = "deflate"
    numpy_pickle: Literal[1, 2] = 1
    #: torch's zip format (its default since 1.6), or the legacy one (pickles back to back).
    serialization: Literal["zip", "legacy"] = "zip"
    junk: bool = False

    def __post_init__(self) -> None:
        if self.patients < 1 or self.shapes < 1:
            raise ValueError("patients and shapes must be at least 1")
        if self.seed < 0 or self.first_patient < 0:
            raise ValueError("seed and first_patient must be non-negative (they seed numpy RNGs)")
        if self.values not in ("numpy", "tensor"):
            raise ValueError(f"values must be 'numpy' or 'tensor', not {self.values!r}")
        if self.compression not in ("deflate", "stored"):
            raise ValueError(f"compression must be 'deflate' or 'stored', not {self.compression!r}")
        if self.serialization not in ("zip", "legacy"):
            raise ValueError(f"serialization must be 'zip' or 'legacy', not {self.serialization!r}")
        if self.numpy_pickle not in (1, 2):
            raise ValueError(f"numpy_pickle must be 1 or 2, not {self.numpy_pickle!r}")
        for name in ("image_dtype", "mask_dtype", "label_dtype", "landmark_dtype"):
            if np.dtype(getattr(self, name)).kind not in STORABLE_KINDS:
                raise ValueError(f"{name} {getattr(self, name)!r} is not a bool/int/float dtype")
        for name in ("image_dtype", "landmark_dtype"):
            if np.dtype(getattr(self, name)).kind != "f":
                raise ValueError(f"{name} must be a float dtype, not {getattr(self, name)!r}")


# --------------------------------------------------------------------------------------------
# Geometry: a chain of vertebral bodies and discs along a lordotic axis.
# --------------------------------------------------------------------------------------------

# Per body, top to bottom: T12, L1..L5, S1 (labelled: indices 1..6), S2, S3. Image-only bodies
# above and below make the labelled ones sit in anatomy rather than in a void. Lengths in pixels
# (about 0.5 mm/px); tilt in radians of the body axis from vertical, positive = lower end more
# posterior, so tilts increasing downwards give lumbar lordosis and a backward-sloping sacrum.
_HEIGHT = np.array([48, 50, 52, 53, 54, 54, 56, 44, 36], dtype=float)
_WIDTH = np.array([60, 62, 64, 66, 68, 70, 72, 58, 46], dtype=float)
_TILT = np.array([-0.30, -0.22, -0.13, -0.03, 0.08, 0.19, 0.50, 0.72, 0.95])
# Posterior height as a fraction of anterior height (L5 and the sacrum are wedges).
_POSTERIOR_HEIGHT = np.array([1.0, 1.0, 1.0, 0.98, 0.96, 0.9, 0.88, 0.9, 0.9])
# Inferior-anterior and inferior-posterior insets as fractions of width (the sacral trapezoids).
_INSET_ANTERIOR = np.array([0, 0, 0, 0, 0, 0, 0.2, 0.15, 0.15])
_INSET_POSTERIOR = np.array([0, 0, 0, 0, 0, 0, 0.06, 0.1, 0.1])
# Disc thickness at the centre, between consecutive bodies: T12/L1, D1..D5, S1/S2, S2/S3.
_DISC = np.array([9, 11, 12, 13, 14, 14, 3, 2], dtype=float)
_LABELLED_BODIES = slice(1, 7)
_LABELLED_DISCS = slice(1, 6)
_L3 = 3


@dataclass(frozen=True)
class _Body:
    """One vertebral body: its frame, size, dense edges and resampled contour."""

    origin: np.ndarray  # centre of the superior endplate
    axis: np.ndarray  # unit vector along the body, pointing caudally
    normal: np.ndarray  # unit vector across the body, pointing posteriorly
    height: float
    width: float
    edges: tuple[np.ndarray, ...]  # superior, posterior, inferior, anterior; corner to corner
    contour: np.ndarray  # (BONE_POINTS, 2)

    def at(self, u: float, v: float) -> np.ndarray:
        """World point ``u`` px posterior of the axis and ``v`` px below the superior endplate."""
        return self.origin + u * self.normal + v * self.axis


@dataclass(frozen=True)
class _Disc:
    centre: np.ndarray
    axis: np.ndarray
    normal: np.ndarray
    contour: np.ndarray  # (DISC_POINTS, 2)
    posterior_mid: np.ndarray  # outermost point of the posterior bulge
    anterior_mid: np.ndarray


@dataclass(frozen=True)
class _Geometry:
    bodies: tuple[_Body, ...]
    discs: tuple[_Disc, ...]


def _frame(tilt: float) -> tuple[np.ndarray, np.ndarray]:
    """Caudal axis and posterior normal of a body tilted by ``tilt`` radians."""
    return np.array([math.sin(tilt), math.cos(tilt)]), np.array([math.cos(tilt), -math.sin(tilt)])


def _bowed(p: np.ndarray, q: np.ndarray, bow: float, towards: np.ndarray, n: int = 48) -> np.ndarray:
    """Points from ``p`` to ``q`` on a parabola bulging ``bow`` px towards ``towards`` (or away if < 0)."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    perp = np.array([-(q - p)[1], (q - p)[0]]) / np.linalg.norm(q - p)
    if perp @ (towards - (p + q) / 2) < 0:
        perp = -perp
    return p + t * (q - p) + bow * 4 * t * (1 - t) * perp


def _ring_length(ring: np.ndarray) -> tuple[np.ndarray, float]:
    seg = np.linalg.norm(np.diff(ring, axis=0, append=ring[:1]), axis=1)
    return np.concatenate([[0.0], np.cumsum(seg)]), float(seg.sum())


def _resample_ring(ring: np.ndarray, n: int) -> np.ndarray:
    """``n`` points equally spaced by arc length along a closed polyline, starting at ``ring[0]``."""
    cum, total = _ring_length(ring)
    closed = np.vstack([ring, ring[:1]])
    s = np.arange(n) * (total / n)
    return np.stack([np.interp(s, cum, closed[:, 0]), np.interp(s, cum, closed[:, 1])], axis=1)


def _smooth_ring(ring: np.ndarray, sigma: float) -> np.ndarray:
    """Round the corners of a closed polyline by circular Gaussian smoothing along its arc length."""
    _, total = _ring_length(ring)
    m = int(math.ceil(total / 0.5))
    dense = _resample_ring(ring, m)
    freq = np.fft.rfftfreq(m, d=total / m)
    gain = np.exp(-2.0 * (math.pi * sigma * freq) ** 2)
    return np.fft.irfft(np.fft.rfft(dense, axis=0) * gain[:, None], n=m, axis=0)


def _make_body(origin: np.ndarray, tilt: float, p: dict, i: int) -> _Body:
    axis, normal = _frame(tilt)
    h, w = p["height"][i], p["width"][i]
    hp = h * _POSTERIOR_HEIGHT[i]

    def world(u: float, v: float) -> np.ndarray:
        return origin + u * normal + v * axis

    at, pt = world(-w / 2, 0), world(w / 2, 0)
    pb = world(w / 2 - _INSET_POSTERIOR[i] * w, hp)
    ab = world(-w / 2 + _INSET_ANTERIOR[i] * w, h)
    centre = (at + pt + pb + ab) / 4
    edges = (
        _bowed(at, pt, p["endplate"], centre),
        _bowed(pt, pb, p["posterior_wall"], centre),
        _bowed(pb, ab, p["endplate"], centre),
        _bowed(ab, at, p["waist"], centre),
    )
    ring = np.vstack([e[:-1] for e in edges])
    contour = _resample_ring(_smooth_ring(ring, p["corner"]), BONE_POINTS)
    return _Body(origin, axis, normal, h, w, edges, contour)


def _make_disc(upper: _Body, lower: _Body, p: dict) -> _Disc:
    ab_up, pb_up = upper.edges[2][-1], upper.edges[2][0]
    at_low, pt_low = lower.edges[0][0], lower.edges[0][-1]
    centre = (ab_up + pb_up + at_low + pt_low) / 4
    posterior = _bowed(pb_up, pt_low, -p["bulge"], centre)
    anterior = _bowed(at_low, ab_up, -p["bulge"] * 0.7, centre)
    ring = np.vstack([upper.edges[2][::-1][:-1], posterior[:-1], lower.edges[0][::-1][:-1], anterior[:-1]])
    contour = _resample_ring(_smooth_ring(ring, 1.5), DISC_POINTS)
    axis = upper.axis + lower.axis
    axis /= np.linalg.norm(axis)
    normal = np.array([axis[1], -axis[0]])
    mid = len(posterior) // 2
    return _Disc(centre, axis, normal, contour, posterior[mid], anterior[mid])


def _chain(start: np.ndarray, p: dict) -> _Geometry:
    """Stack bodies and discs from the superior endplate centre of L1, upwards to T12 and down."""
    tilt = p["tilt"]
    l1 = _make_body(start, tilt[1], p, 1)
    t12_axis = _frame((tilt[0] + tilt[1]) / 2)[0]
    t12_origin = start - t12_axis * p["disc"][0] - _frame(tilt[0])[0] * p["height"][0]
    bodies = [_make_body(t12_origin, tilt[0], p, 0), l1]
    for i in range(2, len(_HEIGHT)):
        bodies.append(_next_body(bodies[-1], i, p))
    discs = tuple(_make_disc(bodies[i], bodies[i + 1], p) for i in range(len(bodies) - 1))
    return _Geometry(tuple(bodies), discs)


def _next_body(upper: _Body, i: int, p: dict) -> _Body:
    """Body ``i`` below ``upper``, the disc between them at least ``min_gap`` px thick everywhere."""
    tilt = p["tilt"][i]
    inferior_mid = (upper.edges[2][0] + upper.edges[2][-1]) / 2
    disc_axis, disc_normal = _frame((p["tilt"][i - 1] + tilt) / 2)
    thickness = p["disc"][i - 1]
    min_gap = 4.0 if i <= 6 else 1.5
    for _ in range(4):
        origin = inferior_mid + disc_axis * thickness + disc_normal * p["slip"][i - 1]
        body = _make_body(origin, tilt, p, i)
        gap = min(
            np.linalg.norm(body.edges[0][-1] - upper.edges[2][0]),
            np.linalg.norm(body.edges[0][0] - upper.edges[2][-1]),
        )
        if gap >= min_gap:
            break
        thickness += min_gap - gap + 0.5
    return body


def _shape_params(patient: int, shape: int, seed: int) -> tuple[dict, np.ndarray]:
    """Random anatomy of virtual shape ``shape``, with a mild per-patient scale and shift."""
    rng = np.random.default_rng([seed, shape, 101])
    pat = np.random.default_rng([seed, patient, 202])
    n = len(_HEIGHT)
    scale = float(np.clip(1 + 0.04 * rng.standard_normal(), 0.92, 1.08))
    scale *= float(np.clip(1 + 0.015 * pat.standard_normal(), 0.97, 1.03))
    lordosis = float(np.clip(1 + 0.25 * rng.standard_normal(), 0.55, 1.5))
    tilt = lordosis * (_TILT - _TILT[_L3]) + _TILT[_L3] + 0.05 * rng.standard_normal()
    tilt = tilt + 0.025 * rng.standard_normal(n)
    params = {
        "height": _HEIGHT * scale * (1 + 0.04 * rng.standard_normal(n)),
        "width": _WIDTH * scale * (1 + 0.04 * rng.standard_normal(n)),
        "tilt": tilt,
        "disc": _DISC * scale * np.clip(1 + 0.15 * rng.standard_normal(n - 1), 0.6, 1.4),
        "slip": np.clip(1.2 * rng.standard_normal(n - 1), -3, 3),
        "endplate": 1.2 + 0.8 * abs(rng.standard_normal()),
        "posterior_wall": 1.0 + 0.5 * abs(rng.standard_normal()),
        "waist": 1.5 + 0.8 * abs(rng.standard_normal()),
        "corner": 2.5 + 0.5 * rng.uniform(),
        "bulge": 1.5 + 1.0 * abs(rng.standard_normal()),
    }
    start = np.array([236 + 10 * rng.standard_normal(), 72 + 8 * rng.standard_normal()])
    start += 4 * pat.standard_normal(2)
    return params, start


def _geometry(patient: int, shape: int, seed: int) -> _Geometry:
    """The chain for this sample, shifted if needed so every labelled structure is well inside."""
    params, start = _shape_params(patient, shape, seed)
    geometry = _chain(start, params)
    pts = np.vstack([b.contour for b in geometry.bodies[_LABELLED_BODIES]])
    low, high = pts.min(axis=0), pts.max(axis=0)
    margin = 12.0
    shift = np.maximum(margin - low, 0) - np.maximum(high - (SIZE - 1 - margin), 0)
    return _chain(start + shift, params) if shift.any() else geometry


# --------------------------------------------------------------------------------------------
# Texture: per-patient tissue intensities, noise fields, bias field.
# --------------------------------------------------------------------------------------------

# Tissue classes of the painted class map; nuclei of the eight discs are classes _NUCLEUS + k.
_AIR, _FAT, _ABDOMEN, _MUSCLE, _LIGAMENT, _CSF, _NERVE, _VESSEL, _CORTEX, _MARROW, _ANNULUS, _VEIN = range(12)
_NUCLEUS = 16
_N_CLASSES = _NUCLEUS + len(_DISC)
# T2-weighted base intensity, and weights of the fine (marrow), coarse (bowel) and
# striated (muscle) texture fields.
_TISSUES = {
    _AIR: (0.0, 0.0, 0.0, 0.0),
    _FAT: (0.78, 0.03, 0.04, 0.0),
    _ABDOMEN: (0.36, 0.04, 0.18, 0.0),
    _MUSCLE: (0.22, 0.02, 0.0, 0.05),
    _LIGAMENT: (0.09, 0.01, 0.0, 0.0),
    _CSF: (0.95, 0.01, 0.0, 0.0),
    _NERVE: (0.5, 0.0, 0.0, 0.0),
    _VESSEL: (0.06, 0.01, 0.0, 0.0),
    _CORTEX: (0.12, 0.02, 0.0, 0.0),
    _MARROW: (0.47, 0.06, 0.02, 0.0),
    _ANNULUS: (0.27, 0.03, 0.0, 0.0),
    _VEIN: (0.72, 0.0, 0.0, 0.0),
}


@dataclass(frozen=True)
class _Texture:
    lut: np.ndarray  # (4, _N_CLASSES) float32: base, fine, coarse, striation weights
    fields: np.ndarray  # (3, SIZE, SIZE) float32: fine, coarse, striation
    bias: np.ndarray  # (SIZE, SIZE) float32, max 1
    noise: float
    blur: float
    fat_back: float  # subcutaneous fat thickness, back
    fat_front: float
    skin_back: float  # distance of the back skin from the spine axis
    skin_front: float  # column of the anterior abdominal skin (negative: outside the image)
    vessel: bool
    basivertebral: bool
    hemangioma: tuple[int, float, float, float] | None  # body, u, v (fractions), radius


def _upsampled_noise(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Unit-variance smooth noise: a coarse Gaussian grid, bicubically upsampled to full size."""
    coarse = Image.fromarray(rng.standard_normal((rows, cols), dtype=np.float32))
    field = np.asarray(coarse.resize((SIZE, SIZE), Image.Resampling.BICUBIC))
    return (field - field.mean()) / field.std()


def _bias_field(rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative field of a posterior (spine) surface coil, separable, max 1."""
    pixel = np.arange(SIZE, dtype=np.float32)
    gx = np.exp(-0.5 * ((pixel - rng.uniform(470, 620)) / rng.uniform(160, 260)) ** 2)
    gy = np.exp(-0.5 * ((pixel - rng.uniform(170, 340)) / rng.uniform(230, 400)) ** 2)
    gy *= 1 + rng.uniform(-0.2, 0.2) * (pixel - SIZE / 2) / SIZE
    floor = rng.uniform(0.3, 0.55)
    bias = floor + (1 - floor) * gy[:, None] * gx[None, :]
    return (bias / bias.max()).astype(np.float32)


@lru_cache(maxsize=8)
def _texture(patient: int, seed: int) -> _Texture:
    """Everything about a sample's appearance that belongs to the patient, not to the shape."""
    rng = np.random.default_rng([seed, patient, 303])
    lut = np.zeros((4, _N_CLASSES), dtype=np.float32)
    for cls, values in _TISSUES.items():
        lut[:, cls] = values
    lut[0, 1 : _VEIN + 1] *= 1 + 0.07 * rng.standard_normal(_VEIN)
    degeneration = np.clip(rng.normal(0.1 + 0.1 * np.arange(6), 0.15), 0, 1)
    lut[0, _NUCLEUS : _NUCLEUS + 6] = 0.9 - 0.55 * degeneration
    lut[0, _NUCLEUS + 6 :] = 0.3  # S1/S2 and S2/S3: vestigial discs
    lut[1, _NUCLEUS:] = 0.03
    bowel = 0.7 * _upsampled_noise(rng, 24, 24) + 0.5 * _upsampled_noise(rng, 64, 64)
    fields = np.stack(
        [
            _upsampled_noise(rng, 96, 96),
            np.tanh(1.5 * bowel),
            _upsampled_noise(rng, 24, 160),  # elongated cranio-caudally: muscle fibres
        ]
    )
    fields.setflags(write=False)
    bias = _bias_field(rng)
    bias.setflags(write=False)
    hemangioma = None
    if rng.uniform() < 0.3:
        hemangioma = (int(rng.integers(1, 7)), rng.uniform(-0.2, 0.2), rng.uniform(0.3, 0.7), rng.uniform(4, 8))
    lut.setflags(write=False)
    return _Texture(
        lut=lut,
        fields=fields,
        bias=bias,
        noise=rng.uniform(0.012, 0.03),
        blur=rng.uniform(0.6, 1.0),
        fat_back=rng.uniform(12, 45),
        fat_front=rng.uniform(10, 40),
        skin_back=rng.uniform(175, 215),
        skin_front=rng.uniform(-90, 35),
        vessel=bool(rng.uniform() < 0.7),
        basivertebral=bool(rng.uniform() < 0.8),
        hemangioma=hemangioma,
    )


# --------------------------------------------------------------------------------------------
# Painting: class map and label map from the geometry.
# --------------------------------------------------------------------------------------------


def _poly(points: np.ndarray) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in points]


def _band(points: np.ndarray, normals: np.ndarray, near: np.ndarray | float, far: np.ndarray | float) -> np.ndarray:
    """Polygon between two offsets of a polyline along its per-point normals."""
    near = np.broadcast_to(near, len(points))[:, None]
    far = np.broadcast_to(far, len(points))[:, None]
    return np.vstack([points + normals * near, (points + normals * far)[::-1]])


def _wall(g: _Geometry, posterior: bool) -> tuple[np.ndarray, np.ndarray]:
    """Points along the posterior (or anterior) wall of the whole chain and their outward normals,
    extended far above the image so bands drawn along it leave the top edge."""
    points, normals = [], []
    for i, body in enumerate(g.bodies):
        edge = body.edges[1] if posterior else body.edges[3][::-1]
        for point in edge[:: len(edge) // 4]:
            points.append(point)
            normals.append(body.normal)
        if i < len(g.discs):
            disc = g.discs[i]
            points.append(disc.posterior_mid if posterior else disc.anterior_mid)
            normals.append(disc.normal)
    points, normals = np.array(points), np.array(normals)
    if not posterior:
        normals = -normals
    top = points[0] - g.bodies[0].axis * 300
    return np.vstack([top, points]), np.vstack([normals[:1], normals])


def _spine_x(g: _Geometry, rows: np.ndarray) -> np.ndarray:
    """Column of the spine axis at each row (constant beyond the ends of the chain)."""
    centres = np.array([b.at(0, b.height / 2) for b in g.bodies])
    return np.interp(rows, centres[:, 1], centres[:, 0])


def _paint_soft_tissue(draw: ImageDraw.ImageDraw, g: _Geometry, tex: _Texture) -> None:
    rows = np.linspace(-40, SIZE + 40, 40)
    spine = _spine_x(g, rows)
    buttock = 45 * np.clip((rows - g.bodies[6].origin[1]) / 120, 0, 1) ** 2
    back = np.minimum(spine + tex.skin_back + buttock, SIZE - 8)
    front = tex.skin_front - 25 * np.sin(np.pi * np.clip(rows, 0, SIZE) / SIZE)
    back_fat = tex.fat_back * (1 + 0.8 * buttock / 45)

    def region(left: np.ndarray, right: np.ndarray) -> list[tuple[float, float]]:
        return _poly(np.vstack([np.stack([left, rows], 1), np.stack([right, rows], 1)[::-1]]))

    draw.polygon(region(front, back), fill=_FAT)
    draw.polygon(region(front + tex.fat_front, back - back_fat), fill=_MUSCLE)
    draw.polygon(region(front + tex.fat_front + 12, spine), fill=_ABDOMEN)


def _paint_posterior_elements(draw: ImageDraw.ImageDraw, g: _Geometry, canal: float) -> None:
    """Laminae and spinous processes of T12..S1 (the sacral one a short crest)."""
    for i, body in enumerate(g.bodies[:7]):
        h, u0 = body.height, body.width / 2 + canal + 4
        length = 32 if i == 6 else 58 + 10 * math.sin(i)
        drop = 0.3 * length
        outline = np.array(
            [
                body.at(u0, 0.2 * h),
                body.at(u0 + 0.3 * length, 0.45 * h),
                body.at(u0 + length, 0.55 * h + drop),
                body.at(u0 + length + 3, 0.7 * h + drop),
                body.at(u0 + length, 0.85 * h + drop),
                body.at(u0 + 0.3 * length, 0.9 * h),
                body.at(u0, h),
            ]
        )
        draw.polygon(_poly(outline), fill=_CORTEX)
        draw.polygon(_poly(_offset_ring(outline, 3.0)), fill=_MARROW)


def _offset_ring(ring: np.ndarray, inset: float) -> np.ndarray:
    """Closed polyline moved ``inset`` px inwards along its vertex normals (for rims)."""
    tangent = np.roll(ring, -1, axis=0) - np.roll(ring, 1, axis=0)
    normal = np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    x, y = ring[:, 0], ring[:, 1]
    area = 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)
    return ring - np.sign(area) * inset * normal  # vertex normals point outwards when area > 0


def _paint_canal(draw: ImageDraw.ImageDraw, g: _Geometry, width: float) -> None:
    """Thecal sac behind the chain: dark dura/ligament rim, CSF ending in S2, and the conus."""
    points, normals = _wall(g, posterior=True)
    v = np.cumsum(np.r_[0, np.linalg.norm(np.diff(points, axis=0), axis=1)])
    v_s1, v_s2 = _wall_position(points, g.bodies[6].origin), _wall_position(points, g.bodies[7].at(0, 20))
    taper = np.clip((v[v_s2] - v) / (v[v_s2] - v[v_s1]), 0, 1)
    csf = width * (0.6 + 0.4 * taper)
    csf[v > v[v_s2]] = 0
    draw.polygon(_poly(_band(points, normals, -8, csf + 5)), fill=_LIGAMENT)
    draw.polygon(_poly(_band(points, normals, 2, 2 + csf)), fill=_CSF)
    v_tip = v[_wall_position(points, g.bodies[1].at(0, 0.6 * g.bodies[1].height))]
    cord = 0.2 * width * np.clip((v_tip - v) / 60, 0, 1)
    keep = v <= v_tip
    centre = 2 + csf[keep] * 0.45
    draw.polygon(_poly(_band(points[keep], normals[keep], centre - cord[keep], centre + cord[keep])), fill=_NERVE)


def _wall_position(points: np.ndarray, target: np.ndarray) -> int:
    return int(np.argmin(np.linalg.norm(points - target, axis=1)))


def _paint_prevertebral(draw: ImageDraw.ImageDraw, g: _Geometry, tex: _Texture) -> None:
    """Anterior longitudinal ligament and, for most patients, the aorta/IVC flow void down to L4."""
    points, normals = _wall(g, posterior=False)
    draw.polygon(_poly(_band(points, normals, -10, 4)), fill=_LIGAMENT)
    if tex.vessel:
        keep = np.arange(len(points)) <= _wall_position(points, g.bodies[4].at(0, g.bodies[4].height))
        draw.polygon(_poly(_band(points[keep], normals[keep], 6, 28)), fill=_VESSEL)


def _paint_disc(draw: ImageDraw.ImageDraw, disc: _Disc, k: int, cleft: bool) -> None:
    draw.polygon(_poly(disc.contour), fill=_ANNULUS)
    if k >= 6:
        return
    rel = disc.contour - disc.centre
    nucleus = disc.centre + np.outer(rel @ disc.normal * 0.7, disc.normal) + np.outer(rel @ disc.axis * 0.6, disc.axis)
    draw.polygon(_poly(nucleus), fill=_NUCLEUS + k)
    if cleft:
        ends = [disc.centre - 0.25 * _span(disc) * disc.normal, disc.centre + 0.25 * _span(disc) * disc.normal]
        draw.line(_poly(np.array(ends)), fill=_ANNULUS, width=1)


def _span(disc: _Disc) -> float:
    proj = (disc.contour - disc.centre) @ disc.normal
    return float(proj.max() - proj.min())


def _paint_body(draw: ImageDraw.ImageDraw, body: _Body, i: int, tex: _Texture) -> None:
    draw.polygon(_poly(body.contour), fill=_CORTEX)
    draw.polygon(_poly(_offset_ring(body.contour, 2.5)), fill=_MARROW)
    if tex.basivertebral and 1 <= i <= 5:
        u, v = body.width / 2 - 2, body.height / 2
        draw.polygon(_poly(np.array([body.at(u + 1, v - 3), body.at(u - 9, v), body.at(u + 1, v + 3)])), fill=_VEIN)
    if tex.hemangioma is not None and tex.hemangioma[0] == i:
        _, fu, fv, r = tex.hemangioma
        c = body.at(fu * body.width, fv * body.height)
        draw.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=_FAT)


def _class_map(g: _Geometry, tex: _Texture, patient: int, seed: int) -> np.ndarray:
    """Tissue class of every pixel, painted back to front."""
    canvas = Image.new("L", (SIZE, SIZE), _AIR)
    draw = ImageDraw.Draw(canvas)
    canal = 24 * g.bodies[3].width / _WIDTH[3]
    _paint_soft_tissue(draw, g, tex)
    _paint_posterior_elements(draw, g, canal)
    _paint_prevertebral(draw, g, tex)
    _paint_canal(draw, g, canal)
    clefts = np.random.default_rng([seed, patient, 404]).uniform(size=len(g.discs)) < 0.6
    for k, disc in enumerate(g.discs):
        _paint_disc(draw, disc, k, bool(clefts[k]))
    for i, body in enumerate(g.bodies):
        _paint_body(draw, body, i, tex)
    return np.asarray(canvas)


def _label_map(g: _Geometry) -> np.ndarray:
    """Label image: discs first, then bodies on top, so shared boundary pixels go to the bone."""
    canvas = Image.new("L", (SIZE, SIZE), 0)
    draw = ImageDraw.Draw(canvas)
    for k, disc in enumerate(g.discs[_LABELLED_DISCS]):
        draw.polygon(_poly(disc.contour), fill=len(BONE_NAMES) + 1 + k)
    for i, body in enumerate(g.bodies[_LABELLED_BODIES]):
        draw.polygon(_poly(body.contour), fill=1 + i)
    return np.asarray(canvas)


# --------------------------------------------------------------------------------------------
# Image formation.
# --------------------------------------------------------------------------------------------


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with edge padding (small sigma: partial-volume softening)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    for axis in (0, 1):
        padded = np.pad(image, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)], mode="edge")
        out = np.zeros_like(image)
        for j, tap in enumerate(taps):
            out += tap * (padded[j : j + SIZE] if axis == 0 else padded[:, j : j + SIZE])
        image = out
    return image


def _normalize(image: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] in float64, then float32 (monotone rounding keeps it within [0, 1])."""
    image = image.astype(np.float64)
    low, high = image.min(), image.max()
    return ((image - low) / (high - low)).astype(np.float32)


def equalize_hist(image: np.ndarray, nbins: int = 256) -> np.ndarray:
    """Histogram equalization as ``skimage.exposure.equalize_hist`` (interpolated CDF at bin centres)."""
    low, high = float(image.min()), float(image.max())
    hist, edges = np.histogram(image, bins=nbins, range=(low, high))
    cdf = np.cumsum(hist, dtype=np.float64)
    cdf /= cdf[-1]
    step = edges[1] - edges[0]
    pos = np.clip((image.astype(np.float64) - (low + step / 2)) / step, 0, nbins - 1)
    index = np.minimum(pos.astype(np.int64), nbins - 2)
    frac = pos - index
    return (cdf[index] * (1 - frac) + cdf[index + 1] * frac).astype(np.float32)


def _images(classes: np.ndarray, tex: _Texture, patient: int, shape: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw (biased, noisy) image and the same with the bias divided out, both unnormalized."""
    clean = tex.lut[0][classes]
    for w, field in zip(tex.lut[1:], tex.fields):
        clean += w[classes] * field
    clean = _gaussian_blur(np.maximum(clean, 0), tex.blur)
    noise = np.random.default_rng([seed, patient, shape, 505]).standard_normal((2, SIZE, SIZE), dtype=np.float32)
    raw = np.hypot(tex.bias * clean + tex.noise * noise[0], tex.noise * noise[1])
    return raw, raw / tex.bias


#: The scanner stores 12-bit intensities; the raw image is those integers divided by their maximum.
#: Equalization works on 8 bits (as OpenCV's ``equalizeHist``). Both choices are what makes a
#: sample deflate to ~1.9 MB, as the release's archives do (20.23 GB / 10,000 samples); continuous
#: images would deflate to ~3.4 MB.
SCANNER_LEVELS = 4095
EQUALIZED_LEVELS = 255


def _quantize(image: np.ndarray, levels: int) -> np.ndarray:
    """``image`` in [0, 1] rounded to ``k / levels``, as float32."""
    return (np.round(image.astype(np.float64) * levels) / levels).astype(np.float32)


def make_sample(patient: int, shape: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Canonical-dtype sample (float32 images, uint8 masks/label, float64 landmarks), deterministic in its args.

    ``bone`` and ``disk`` contours start at the anterior-superior corner and run posteriorly along
    the superior boundary (clockwise on screen), equally spaced by arc length. The release does not
    document the order of ``shape``; here it is the 6 x 236 bone points followed by 56 of the 176
    points of each disc (every ~3rd point).
    """
    g = _geometry(patient, shape, seed)
    tex = _texture(patient, seed)
    raw, corrected = _images(_class_map(g, tex, patient, seed), tex, patient, shape, seed)
    img = _quantize(_normalize(raw), SCANNER_LEVELS)
    label = _label_map(g)
    ids = np.arange(1, len(BONE_NAMES) + len(DISC_NAMES) + 1, dtype=np.uint8)
    mask = (label[None] == ids[:, None, None]).view(np.uint8)
    bone = np.stack([b.contour for b in g.bodies[_LABELLED_BODIES]])
    disk = np.stack([d.contour for d in g.discs[_LABELLED_DISCS]])
    subsample = np.round(np.arange(DISC_POINTS_IN_SHAPE) * DISC_POINTS / DISC_POINTS_IN_SHAPE).astype(int)
    return {
        "img": img,
        "img_corrected": _normalize(corrected),
        "img_equalized": _quantize(equalize_hist(img), EQUALIZED_LEVELS),
        "label": label[None].copy(),
        "mask": mask,
        "shape": np.concatenate([bone.reshape(-1, 2), disk[:, subsample].reshape(-1, 2)]),
        "bone": bone,
        "bone_mask": mask[: len(BONE_NAMES)].copy(),
        "disk": disk,
        "disk_mask": mask[len(BONE_NAMES) :].copy(),
    }


# --------------------------------------------------------------------------------------------
# Storage: dtypes, torch.save with numpy-1.x pickles, zip archives and extracted trees.
# --------------------------------------------------------------------------------------------


def _field_dtype(field: str, config: SynthConfig) -> np.dtype:
    if field in IMAGE_FIELDS:
        return np.dtype(config.image_dtype)
    if field in MASK_FIELDS:
        return np.dtype(config.mask_dtype)
    if field in LANDMARK_FIELDS:
        return np.dtype(config.landmark_dtype)
    return np.dtype(config.label_dtype)


def cast_sample(sample: dict[str, np.ndarray], config: SynthConfig) -> dict[str, np.ndarray | torch.Tensor]:
    """The sample in the configured dtypes and value kind (every value its own, contiguous buffer,
    so tensors do not share storages and pickles do not depend on views)."""
    cast = {f: a.astype(_field_dtype(f, config), order="C") for f, a in sample.items()}
    if config.values == "tensor":
        return {f: torch.from_numpy(a) for f, a in cast.items()}
    return cast


class _Numpy1Pickler(pickle._Pickler):
    """Pure-Python pickler that names ``_reconstruct`` by its numpy 1.x module, as the 2024
    release does; numpy 2 itself would write ``numpy._core.multiarray``."""

    def save_global(self, obj: object, name: str | None = None) -> None:
        if obj is _reconstruct:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


#: ``dump`` writes the legacy format's header pickles (magic number, protocol, system info).
_PICKLE_MODULES = {
    1: types.SimpleNamespace(Pickler=_Numpy1Pickler, dump=pickle.dump, __name__="numpy1_pickle"),
    2: pickle,
}


def pt_bytes(sample: dict, config: SynthConfig, protocol: int = 2) -> bytes:
    """``torch.save`` of ``sample`` as given (cast it first) with the configured numpy pickle style
    and serialization format.

    Protocol 2 is torch's default, so numpy buffers go through ``_codecs.encode`` as in the release.
    """
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch notes when a protocol is not its default
        torch.save(
            sample,
            buffer,
            pickle_module=_PICKLE_MODULES[config.numpy_pickle],
            pickle_protocol=protocol,
            _use_new_zipfile_serialization=config.serialization == "zip",
        )
    return buffer.getvalue()


def member_name(root: str, patient: int, shape: int) -> str:
    """Archive member of one sample: ``"<root>/p<patient>/aug<shape>.pt"``, no zero padding."""
    return f"{root}/p{patient}/aug{shape}.pt"


def iter_members(config: SynthConfig) -> Iterator[tuple[str, int, int]]:
    """(member name, patient, shape) of every sample, in archive order: patients, then shapes 1..M."""
    for patient in range(config.first_patient, config.first_patient + config.patients):
        for shape in range(1, config.shapes + 1):
            yield member_name(config.root, patient, shape), patient, shape


# AppleDouble header ("._" resource-fork file) and a .DS_Store prefix: content that is clearly
# not a torch file, as in archives made with macOS Finder.
_APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \x00\x00"
_DS_STORE = b"\x00\x00\x00\x01Bud1" + bytes(6136)


def _payloads(config: SynthConfig) -> Iterator[tuple[str, bytes]]:
    """Every member's name and bytes in archive order, junk included when configured."""
    if config.junk:
        yield f"{config.root}/.DS_Store", _DS_STORE
    for name, patient, shape in iter_members(config):
        sample = cast_sample(make_sample(patient, shape, config.seed), config)
        yield name, pt_bytes(sample, config)
        if config.junk and patient == config.first_patient and shape == 1:
            head, _, tail = name.rpartition("/")
            yield f"__MACOSX/{head}/._{tail}", _APPLEDOUBLE


def write_archive(path: str | Path, config: SynthConfig) -> Path:
    """Write a release-style zip to ``path`` (tmp file + rename, so a crash leaves no partial zip)."""
    path = Path(path)
    compression = zipfile.ZIP_DEFLATED if config.compression == "deflate" else zipfile.ZIP_STORED
    target = AtomicFile(path)
    try:
        with zipfile.ZipFile(target.file, "w", allowZip64=True) as archive:
            for name, data in _payloads(config):
                info = zipfile.ZipInfo(name, date_time=MEMBER_DATE_TIME)
                info.compress_type = compression
                info.external_attr = 0o644 << 16
                archive.writestr(info, data)
        target.commit()
    except BaseException:
        target.abort()
        raise
    return path


def write_tree(directory: str | Path, config: SynthConfig) -> Path:
    """Write the members as files under ``directory``, as if the archive had been extracted."""
    directory = Path(directory)
    for name, data in _payloads(config):
        target = directory / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return directory
