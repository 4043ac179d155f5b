"""Texture: per-patient tissue intensities, noise fields and bias field, a function of
``(seed, patient)`` only, so every shape of a patient shares them."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from pipeline.tools.synth.anatomy import DISC
from pipeline.tools.synth.config import SIZE

# Tissue classes of the painted class map; nuclei of the eight discs are classes NUCLEUS + k.
AIR, FAT, ABDOMEN, MUSCLE, LIGAMENT, CSF, NERVE, VESSEL, CORTEX, MARROW, ANNULUS, VEIN = range(12)
NUCLEUS = 16
_N_CLASSES = NUCLEUS + len(DISC)
# T2-weighted base intensity, and weights of the fine (marrow), coarse (bowel) and
# striated (muscle) texture fields.
_TISSUES = {
    AIR: (0.0, 0.0, 0.0, 0.0),
    FAT: (0.78, 0.03, 0.04, 0.0),
    ABDOMEN: (0.36, 0.04, 0.18, 0.0),
    MUSCLE: (0.22, 0.02, 0.0, 0.05),
    LIGAMENT: (0.09, 0.01, 0.0, 0.0),
    CSF: (0.95, 0.01, 0.0, 0.0),
    NERVE: (0.5, 0.0, 0.0, 0.0),
    VESSEL: (0.06, 0.01, 0.0, 0.0),
    CORTEX: (0.12, 0.02, 0.0, 0.0),
    MARROW: (0.47, 0.06, 0.02, 0.0),
    ANNULUS: (0.27, 0.03, 0.0, 0.0),
    VEIN: (0.72, 0.0, 0.0, 0.0),
}


@dataclass(frozen=True)
class Texture:
    """A patient's appearance: tissue intensities, texture and bias fields, and which optional
    structures (flow void, basivertebral vein, hemangioma) the class map gets."""

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
def patient_texture(patient: int, seed: int) -> Texture:
    """Everything about a sample's appearance that belongs to the patient, not to the shape."""
    rng = np.random.default_rng([seed, patient, 303])
    lut = np.zeros((4, _N_CLASSES), dtype=np.float32)
    for cls, values in _TISSUES.items():
        lut[:, cls] = values
    lut[0, 1 : VEIN + 1] *= 1 + 0.07 * rng.standard_normal(VEIN)
    degeneration = np.clip(rng.normal(0.1 + 0.1 * np.arange(6), 0.15), 0, 1)
    lut[0, NUCLEUS : NUCLEUS + 6] = 0.9 - 0.55 * degeneration
    lut[0, NUCLEUS + 6 :] = 0.3  # S1/S2 and S2/S3: vestigial discs
    lut[1, NUCLEUS:] = 0.03
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
    return Texture(
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
