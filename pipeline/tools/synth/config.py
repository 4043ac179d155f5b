"""What to generate and how to store it (:class:`SynthConfig`), and the sizes every part shares:
the image side and the number of contour points per bone and per disc, taken from the schema."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from pipeline.errors import UsageError
from pipeline.schema import BONE_NAMES, DISC_NAMES, FIELD_SHAPES, STORABLE_KINDS
from pipeline.source.zip_crypto import ENCRYPTIONS

SIZE = FIELD_SHAPES["img"][0]
BONE_POINTS = FIELD_SHAPES["bone"][1]
DISC_POINTS = FIELD_SHAPES["disk"][1]
#: Disc points per disc in ``shape``: (1696 - 6 * 236) / 5.
DISC_POINTS_IN_SHAPE = (FIELD_SHAPES["shape"][0] - len(BONE_NAMES) * BONE_POINTS) // len(DISC_NAMES)


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
    #: Encrypt every member: ``"zipcrypto"`` or ``"aes"`` (AES-256, AE-2), with the password given
    #: to :func:`~pipeline.tools.synth.write_archive` (never part of the configuration).
    encrypt: Literal["none", "zipcrypto", "aes"] = "none"

    def __post_init__(self) -> None:
        if self.patients < 1 or self.shapes < 1:
            raise UsageError("patients and shapes must be at least 1")
        if self.seed < 0 or self.first_patient < 0:
            raise UsageError("seed and first_patient must be non-negative (they seed numpy RNGs)")
        if self.values not in ("numpy", "tensor"):
            raise UsageError(f"values must be 'numpy' or 'tensor', not {self.values!r}")
        if self.compression not in ("deflate", "stored"):
            raise UsageError(f"compression must be 'deflate' or 'stored', not {self.compression!r}")
        if self.serialization not in ("zip", "legacy"):
            raise UsageError(f"serialization must be 'zip' or 'legacy', not {self.serialization!r}")
        if self.encrypt not in ENCRYPTIONS:
            raise UsageError(f"encrypt must be one of {ENCRYPTIONS}, not {self.encrypt!r}")
        if self.numpy_pickle not in (1, 2):
            raise UsageError(f"numpy_pickle must be 1 or 2, not {self.numpy_pickle!r}")
        for name in ("image_dtype", "mask_dtype", "label_dtype", "landmark_dtype"):
            if np.dtype(getattr(self, name)).kind not in STORABLE_KINDS:
                raise UsageError(f"{name} {getattr(self, name)!r} is not a bool/int/float dtype")
        for name in ("image_dtype", "landmark_dtype"):
            if np.dtype(getattr(self, name)).kind != "f":
                raise UsageError(f"{name} must be a float dtype, not {getattr(self, name)!r}")
