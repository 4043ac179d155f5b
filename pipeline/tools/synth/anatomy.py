"""Geometry: a chain of vertebral bodies and discs along a lordotic axis, a function of
``(seed, shape)`` and only mildly of ``patient`` (a small scale and shift)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.tools.synth.config import BONE_POINTS, DISC_POINTS, SIZE

# Per body, top to bottom: T12, L1..L5, S1 (labelled: indices 1..6), S2, S3. Image-only bodies
# above and below make the labelled ones sit in anatomy rather than in a void. Lengths in pixels
# (about 0.5 mm/px); tilt in radians of the body axis from vertical, positive = lower end more
# posterior, so tilts increasing downwards give lumbar lordosis and a backward-sloping sacrum.
_HEIGHT = np.array([48, 50, 52, 53, 54, 54, 56, 44, 36], dtype=float)
WIDTH = np.array([60, 62, 64, 66, 68, 70, 72, 58, 46], dtype=float)
_TILT = np.array([-0.30, -0.22, -0.13, -0.03, 0.08, 0.19, 0.50, 0.72, 0.95])
# Posterior height as a fraction of anterior height (L5 and the sacrum are wedges).
_POSTERIOR_HEIGHT = np.array([1.0, 1.0, 1.0, 0.98, 0.96, 0.9, 0.88, 0.9, 0.9])
# Inferior-anterior and inferior-posterior insets as fractions of width (the sacral trapezoids).
_INSET_ANTERIOR = np.array([0, 0, 0, 0, 0, 0, 0.2, 0.15, 0.15])
_INSET_POSTERIOR = np.array([0, 0, 0, 0, 0, 0, 0.06, 0.1, 0.1])
# Disc thickness at the centre, between consecutive bodies: T12/L1, D1..D5, S1/S2, S2/S3.
DISC = np.array([9, 11, 12, 13, 14, 14, 3, 2], dtype=float)
LABELLED_BODIES = slice(1, 7)
LABELLED_DISCS = slice(1, 6)
_L3 = 3


@dataclass(frozen=True)
class Body:
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
class Disc:
    """One disc between two bodies: its frame, contour, and the outermost points of its bulges."""

    centre: np.ndarray
    axis: np.ndarray
    normal: np.ndarray
    contour: np.ndarray  # (DISC_POINTS, 2)
    posterior_mid: np.ndarray  # outermost point of the posterior bulge
    anterior_mid: np.ndarray


@dataclass(frozen=True)
class Geometry:
    """The chain top to bottom: bodies T12, L1..L5, S1, S2, S3 and the eight discs between them."""

    bodies: tuple[Body, ...]
    discs: tuple[Disc, ...]


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


def _make_body(origin: np.ndarray, tilt: float, p: dict, i: int) -> Body:
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
    return Body(origin, axis, normal, h, w, edges, contour)


def _make_disc(upper: Body, lower: Body, p: dict) -> Disc:
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
    return Disc(centre, axis, normal, contour, posterior[mid], anterior[mid])


def _chain(start: np.ndarray, p: dict) -> Geometry:
    """Stack bodies and discs from the superior endplate centre of L1, upwards to T12 and down."""
    tilt = p["tilt"]
    l1 = _make_body(start, tilt[1], p, 1)
    t12_axis = _frame((tilt[0] + tilt[1]) / 2)[0]
    t12_origin = start - t12_axis * p["disc"][0] - _frame(tilt[0])[0] * p["height"][0]
    bodies = [_make_body(t12_origin, tilt[0], p, 0), l1]
    for i in range(2, len(_HEIGHT)):
        bodies.append(_next_body(bodies[-1], i, p))
    discs = tuple(_make_disc(bodies[i], bodies[i + 1], p) for i in range(len(bodies) - 1))
    return Geometry(tuple(bodies), discs)


def _next_body(upper: Body, i: int, p: dict) -> Body:
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
        "width": WIDTH * scale * (1 + 0.04 * rng.standard_normal(n)),
        "tilt": tilt,
        "disc": DISC * scale * np.clip(1 + 0.15 * rng.standard_normal(n - 1), 0.6, 1.4),
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


def geometry(patient: int, shape: int, seed: int) -> Geometry:
    """The chain for this sample, shifted if needed so every labelled structure is well inside."""
    params, start = _shape_params(patient, shape, seed)
    chain = _chain(start, params)
    pts = np.vstack([b.contour for b in chain.bodies[LABELLED_BODIES]])
    low, high = pts.min(axis=0), pts.max(axis=0)
    margin = 12.0
    shift = np.maximum(margin - low, 0) - np.maximum(high - (SIZE - 1 - margin), 0)
    return _chain(start + shift, params) if shift.any() else chain
