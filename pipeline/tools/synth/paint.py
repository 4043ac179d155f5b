"""Painting: the tissue class map and the label map, drawn from the geometry (and, for the class
map, the patient's texture choices)."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from pipeline.schema import BONE_NAMES
from pipeline.tools.synth.anatomy import LABELLED_BODIES, LABELLED_DISCS, WIDTH, Body, Disc, Geometry
from pipeline.tools.synth.config import SIZE
from pipeline.tools.synth.texture import (
    ABDOMEN,
    AIR,
    ANNULUS,
    CORTEX,
    CSF,
    FAT,
    LIGAMENT,
    MARROW,
    MUSCLE,
    NERVE,
    NUCLEUS,
    VEIN,
    VESSEL,
    Texture,
)


def _poly(points: np.ndarray) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in points]


def _band(points: np.ndarray, normals: np.ndarray, near: np.ndarray | float, far: np.ndarray | float) -> np.ndarray:
    """Polygon between two offsets of a polyline along its per-point normals."""
    near = np.broadcast_to(near, len(points))[:, None]
    far = np.broadcast_to(far, len(points))[:, None]
    return np.vstack([points + normals * near, (points + normals * far)[::-1]])


def _wall(g: Geometry, posterior: bool) -> tuple[np.ndarray, np.ndarray]:
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


def _spine_x(g: Geometry, rows: np.ndarray) -> np.ndarray:
    """Column of the spine axis at each row (constant beyond the ends of the chain)."""
    centres = np.array([b.at(0, b.height / 2) for b in g.bodies])
    return np.interp(rows, centres[:, 1], centres[:, 0])


def _paint_soft_tissue(draw: ImageDraw.ImageDraw, g: Geometry, tex: Texture) -> None:
    rows = np.linspace(-40, SIZE + 40, 40)
    spine = _spine_x(g, rows)
    buttock = 45 * np.clip((rows - g.bodies[6].origin[1]) / 120, 0, 1) ** 2
    back = np.minimum(spine + tex.skin_back + buttock, SIZE - 8)
    front = tex.skin_front - 25 * np.sin(np.pi * np.clip(rows, 0, SIZE) / SIZE)
    back_fat = tex.fat_back * (1 + 0.8 * buttock / 45)

    def region(left: np.ndarray, right: np.ndarray) -> list[tuple[float, float]]:
        return _poly(np.vstack([np.stack([left, rows], 1), np.stack([right, rows], 1)[::-1]]))

    draw.polygon(region(front, back), fill=FAT)
    draw.polygon(region(front + tex.fat_front, back - back_fat), fill=MUSCLE)
    draw.polygon(region(front + tex.fat_front + 12, spine), fill=ABDOMEN)


def _paint_posterior_elements(draw: ImageDraw.ImageDraw, g: Geometry, canal: float) -> None:
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
        draw.polygon(_poly(outline), fill=CORTEX)
        draw.polygon(_poly(_offset_ring(outline, 3.0)), fill=MARROW)


def _offset_ring(ring: np.ndarray, inset: float) -> np.ndarray:
    """Closed polyline moved ``inset`` px inwards along its vertex normals (for rims)."""
    tangent = np.roll(ring, -1, axis=0) - np.roll(ring, 1, axis=0)
    normal = np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    x, y = ring[:, 0], ring[:, 1]
    area = 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)
    return ring - np.sign(area) * inset * normal  # vertex normals point outwards when area > 0


def _paint_canal(draw: ImageDraw.ImageDraw, g: Geometry, width: float) -> None:
    """Thecal sac behind the chain: dark dura/ligament rim, CSF ending in S2, and the conus."""
    points, normals = _wall(g, posterior=True)
    v = np.cumsum(np.r_[0, np.linalg.norm(np.diff(points, axis=0), axis=1)])
    v_s1, v_s2 = _wall_position(points, g.bodies[6].origin), _wall_position(points, g.bodies[7].at(0, 20))
    taper = np.clip((v[v_s2] - v) / (v[v_s2] - v[v_s1]), 0, 1)
    csf = width * (0.6 + 0.4 * taper)
    csf[v > v[v_s2]] = 0
    draw.polygon(_poly(_band(points, normals, -8, csf + 5)), fill=LIGAMENT)
    draw.polygon(_poly(_band(points, normals, 2, 2 + csf)), fill=CSF)
    v_tip = v[_wall_position(points, g.bodies[1].at(0, 0.6 * g.bodies[1].height))]
    cord = 0.2 * width * np.clip((v_tip - v) / 60, 0, 1)
    keep = v <= v_tip
    centre = 2 + csf[keep] * 0.45
    draw.polygon(_poly(_band(points[keep], normals[keep], centre - cord[keep], centre + cord[keep])), fill=NERVE)


def _wall_position(points: np.ndarray, target: np.ndarray) -> int:
    return int(np.argmin(np.linalg.norm(points - target, axis=1)))


def _paint_prevertebral(draw: ImageDraw.ImageDraw, g: Geometry, tex: Texture) -> None:
    """Anterior longitudinal ligament and, for most patients, the aorta/IVC flow void down to L4."""
    points, normals = _wall(g, posterior=False)
    draw.polygon(_poly(_band(points, normals, -10, 4)), fill=LIGAMENT)
    if tex.vessel:
        keep = np.arange(len(points)) <= _wall_position(points, g.bodies[4].at(0, g.bodies[4].height))
        draw.polygon(_poly(_band(points[keep], normals[keep], 6, 28)), fill=VESSEL)


def _paint_disc(draw: ImageDraw.ImageDraw, disc: Disc, k: int, cleft: bool) -> None:
    draw.polygon(_poly(disc.contour), fill=ANNULUS)
    if k >= 6:
        return
    rel = disc.contour - disc.centre
    nucleus = disc.centre + np.outer(rel @ disc.normal * 0.7, disc.normal) + np.outer(rel @ disc.axis * 0.6, disc.axis)
    draw.polygon(_poly(nucleus), fill=NUCLEUS + k)
    if cleft:
        ends = [disc.centre - 0.25 * _span(disc) * disc.normal, disc.centre + 0.25 * _span(disc) * disc.normal]
        draw.line(_poly(np.array(ends)), fill=ANNULUS, width=1)


def _span(disc: Disc) -> float:
    proj = (disc.contour - disc.centre) @ disc.normal
    return float(proj.max() - proj.min())


def _paint_body(draw: ImageDraw.ImageDraw, body: Body, i: int, tex: Texture) -> None:
    draw.polygon(_poly(body.contour), fill=CORTEX)
    draw.polygon(_poly(_offset_ring(body.contour, 2.5)), fill=MARROW)
    if tex.basivertebral and 1 <= i <= 5:
        u, v = body.width / 2 - 2, body.height / 2
        draw.polygon(_poly(np.array([body.at(u + 1, v - 3), body.at(u - 9, v), body.at(u + 1, v + 3)])), fill=VEIN)
    if tex.hemangioma is not None and tex.hemangioma[0] == i:
        _, fu, fv, r = tex.hemangioma
        c = body.at(fu * body.width, fv * body.height)
        draw.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=FAT)


def class_map(g: Geometry, tex: Texture, patient: int, seed: int) -> np.ndarray:
    """Tissue class of every pixel, painted back to front."""
    canvas = Image.new("L", (SIZE, SIZE), AIR)
    draw = ImageDraw.Draw(canvas)
    canal = 24 * g.bodies[3].width / WIDTH[3]
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


def label_map(g: Geometry) -> np.ndarray:
    """Label image: discs first, then bodies on top, so shared boundary pixels go to the bone."""
    canvas = Image.new("L", (SIZE, SIZE), 0)
    draw = ImageDraw.Draw(canvas)
    for k, disc in enumerate(g.discs[LABELLED_DISCS]):
        draw.polygon(_poly(disc.contour), fill=len(BONE_NAMES) + 1 + k)
    for i, body in enumerate(g.bodies[LABELLED_BODIES]):
        draw.polygon(_poly(body.contour), fill=1 + i)
    return np.asarray(canvas)
