"""The SSMSpine record: field names, shapes, dtypes, label names, and the schema taken from the data.

Every other module speaks in terms of this one. A *record* is ``(key, {field: numpy array})``;
the *schema* of a conversion is taken from the data (the release does not document dtypes)
and then enforced on every sample, so one odd file cannot silently change a whole split.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from pipeline.errors import SchemaError

log = logging.getLogger(__name__)

#: Fields of one sample, in the order of the dataset README, with their documented shapes.
FIELD_SHAPES: dict[str, tuple[int, ...]] = {
    "img": (512, 512),
    "img_corrected": (512, 512),
    "img_equalized": (512, 512),
    "label": (1, 512, 512),
    "mask": (11, 512, 512),
    "shape": (1696, 2),
    "bone": (6, 236, 2),
    "bone_mask": (6, 512, 512),
    "disk": (5, 176, 2),
    "disk_mask": (5, 512, 512),
}
FIELDS: tuple[str, ...] = tuple(FIELD_SHAPES)
IMAGE_FIELDS: tuple[str, ...] = ("img", "img_corrected", "img_equalized")
MASK_FIELDS: tuple[str, ...] = ("mask", "bone_mask", "disk_mask")
LANDMARK_FIELDS: tuple[str, ...] = ("shape", "bone", "disk")

#: Pixel values of ``label``; ``mask[i]`` is the mask of label ``i + 1``.
LABEL_NAMES: dict[int, str] = {
    0: "background",
    1: "L1",
    2: "L2",
    3: "L3",
    4: "L4",
    5: "L5",
    6: "S1",
    7: "D1",  # L1/L2
    8: "D2",  # L2/L3
    9: "D3",  # L3/L4
    10: "D4",  # L4/L5
    11: "D5",  # L5/S1
}
BONE_NAMES: tuple[str, ...] = ("L1", "L2", "L3", "L4", "L5", "S1")
DISC_NAMES: tuple[str, ...] = ("D1", "D2", "D3", "D4", "D5")

#: numpy kinds we store: bool, signed/unsigned integers, floats. Anything else (object, str,
#: complex, datetime) has no place in an image dataset and would not survive Zarr/tensorstore.
STORABLE_KINDS = frozenset("biuf")


@dataclass(frozen=True)
class FieldSpec:
    """Shape and dtype of one field of one sample (without the leading sample axis)."""

    shape: tuple[int, ...]
    dtype: str  # numpy dtype string with explicit byte order, e.g. "<f4", "|b1"

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.numpy_dtype.itemsize

    def to_json(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, data: Mapping) -> "FieldSpec":
        return cls(shape=tuple(int(n) for n in data["shape"]), dtype=str(data["dtype"]))


Schema = dict[str, FieldSpec]


def spec_of(array: np.ndarray) -> FieldSpec:
    """The :class:`FieldSpec` describing ``array``."""
    return FieldSpec(shape=tuple(int(n) for n in array.shape), dtype=array.dtype.str)


def schema_of(sample: Mapping[str, np.ndarray]) -> Schema:
    """The schema of one decoded sample, fields in canonical order."""
    return {field: spec_of(sample[field]) for field in FIELDS}


def schema_from_sample(sample: Mapping[str, np.ndarray], archive: str, member: str) -> Schema:
    """The schema of a conversion, taken from its first sample.

    The keys must be exactly the documented ones; shapes and dtypes are the data's own (the
    README documents shapes only, and a shape that differs from it is logged, not refused).
    """
    check_sample(sample, dict.fromkeys(FIELDS), archive, member, keys_only=True)
    schema = schema_of(sample)
    for field, spec in schema.items():
        if spec.shape != FIELD_SHAPES[field]:
            log.warning(
                "%s: %s: field %r has shape %s, the dataset README says %s",
                archive,
                member,
                field,
                spec.shape,
                FIELD_SHAPES[field],
            )
    return schema


def check_sample(
    sample: Mapping[str, np.ndarray], schema: Mapping, archive: str, member: str, keys_only: bool = False
) -> None:
    """Raise :class:`SchemaError` naming the first field where ``sample`` departs from ``schema``."""
    missing = [f for f in schema if f not in sample]
    extra = [f for f in sample if f not in schema]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing key(s) {missing}")
        if extra:
            parts.append(f"unexpected key(s) {extra}")
        raise SchemaError(archive, member, "; ".join(parts))
    if keys_only:
        return
    for field, expected in schema.items():
        got = spec_of(sample[field])
        if got != expected:
            raise SchemaError(
                archive,
                member,
                f"field {field!r} is {got.dtype} {got.shape}, "
                f"but the rest of the data is {expected.dtype} {expected.shape}",
            )


def content_warnings(sample: Mapping[str, np.ndarray]) -> list[str]:
    """Values a sample should not have but that convert losslessly all the same.

    These are warnings, not errors: the converter's promise is a bit-exact copy, so it keeps
    such values and reports them (summary and manifest) for the user to decide. Structural
    problems — missing or extra keys, another shape or dtype — are errors instead.
    """
    found = []
    for field in IMAGE_FIELDS:
        image = sample.get(field)
        if image is None or image.dtype.kind != "f":
            continue
        finite = np.isfinite(image)
        if not finite.all():
            found.append(f"{field} has {int(image.size - np.count_nonzero(finite))} NaN/Inf values")
        values = image[finite] if not finite.all() else image
        if values.size and (values.min() < 0 or values.max() > 1):
            found.append(f"{field} has values outside [0, 1] ({values.min():.4g} .. {values.max():.4g})")
    label = sample.get("label")
    if label is not None and label.dtype.kind == "f" and not np.isfinite(label).all():
        found.append("label has NaN/Inf values")
    elif label is not None and label.size:
        low, high = label.min(), label.max()
        if (
            low < 0
            or high > max(LABEL_NAMES)
            or (label.dtype.kind == "f" and not np.array_equal(label, np.round(label)))
        ):
            found.append(f"label has values outside the integers 0..{max(LABEL_NAMES)} ({low} .. {high})")
    return found


def schema_to_json(schema: Schema) -> dict:
    return {field: spec.to_json() for field, spec in schema.items()}


def schema_from_json(data: Mapping) -> Schema:
    return {field: FieldSpec.from_json(spec) for field, spec in data.items()}


def sample_key(patient: int, aug: int) -> str:
    """The record key of patient texture ``patient``, virtual shape ``aug`` (e.g. ``p12_aug037``)."""
    return f"p{patient:02d}_aug{aug:03d}"
