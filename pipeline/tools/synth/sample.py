"""Image formation: the class map turned into raw, bias-corrected and equalized images, and the
whole sample (images, label, masks, landmarks) in its canonical dtypes."""

from __future__ import annotations

import math

import numpy as np

from pipeline.schema import BONE_NAMES, DISC_NAMES
from pipeline.tools.synth.anatomy import LABELLED_BODIES, LABELLED_DISCS, geometry
from pipeline.tools.synth.config import DISC_POINTS, DISC_POINTS_IN_SHAPE, SIZE
from pipeline.tools.synth.paint import class_map, label_map
from pipeline.tools.synth.texture import Texture, patient_texture


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


def _images(classes: np.ndarray, tex: Texture, patient: int, shape: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
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
    g = geometry(patient, shape, seed)
    tex = patient_texture(patient, seed)
    raw, corrected = _images(class_map(g, tex, patient, seed), tex, patient, shape, seed)
    img = _quantize(_normalize(raw), SCANNER_LEVELS)
    label = label_map(g)
    ids = np.arange(1, len(BONE_NAMES) + len(DISC_NAMES) + 1, dtype=np.uint8)
    mask = (label[None] == ids[:, None, None]).view(np.uint8)
    bone = np.stack([b.contour for b in g.bodies[LABELLED_BODIES]])
    disk = np.stack([d.contour for d in g.discs[LABELLED_DISCS]])
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
