"""Compact stored dtypes: which fields may be stored narrower than the source, and the per-sample proof.

Decoding ``img`` + ``label`` wrote 3 MB a sample, 2 MB of it an int64 label map whose twelve classes
fit in a byte. Fields with a documented integer range (``label``: 0..11, the masks: 0/1) are stored in
the narrowest integer dtype that holds that range and every value seen in calibration — but only
where that is proven lossless: every sample is narrowed and widened back, and its bytes must come back
identical (so fractions, NaN, -0.0 and out-of-range values all fail), else the sample is an error
naming it. Other fields (images, landmarks) keep their dtype: nothing documents a range for them, and
a later sample outside the calibration's range would stop the conversion.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from pipeline.schema import LABEL_NAMES, MASK_FIELDS, Schema

#: Fields with a documented range of integer values, which may be stored narrower than the source.
DOCUMENTED_RANGES: dict[str, tuple[int, int]] = {
    "label": (0, max(LABEL_NAMES)),
    **{field: (0, 1) for field in MASK_FIELDS},
}

#: Candidate stored dtypes, narrowest first; unsigned before signed of the same width.
_CANDIDATES = tuple(np.dtype(d) for d in ("u1", "i1", "<u2", "<i2", "<u4", "<i4"))


def narrowest(low: int, high: int) -> np.dtype:
    """The narrowest candidate integer dtype holding every integer in ``low .. high``."""
    for dtype in _CANDIDATES:
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return dtype
    return np.dtype("<i8")


def choose_stored_dtypes(schema: Schema, samples: Sequence[Mapping[str, np.ndarray]]) -> dict[str, str]:
    """Field → stored dtype for the fields worth narrowing (the others are not listed).

    A field is narrowed when it has a documented range, the calibration ``samples`` hold only
    integers in its dtype's round trip, and the dtype holding that range and their values is
    smaller than the source's.
    """
    chosen = {}
    for field, (low, high) in DOCUMENTED_RANGES.items():
        spec = schema.get(field)
        if spec is None or spec.numpy_dtype.kind not in "iuf" or spec.numpy_dtype.itemsize == 1:
            continue
        values = [s[field] for s in samples if s[field].size]
        if any(not np.isfinite(v).all() for v in values if v.dtype.kind == "f"):
            continue
        seen_low = min([low, *(int(np.floor(v.min())) for v in values)])
        seen_high = max([high, *(int(np.ceil(v.max())) for v in values)])
        stored = narrowest(seen_low, seen_high)
        if stored.itemsize < spec.numpy_dtype.itemsize and all(narrowed(v, stored) is not None for v in values):
            chosen[field] = stored.str
    return chosen


def narrowed(array: np.ndarray, stored: np.dtype) -> np.ndarray | None:
    """``array`` in ``stored`` (C-contiguous) when that widens back to the same bytes, else None.

    The proof is the round trip itself, not a range test, so it holds for every kind of source
    (fractions, NaN and -0.0 of a float source do not come back identical).
    """
    narrow = np.ascontiguousarray(array.astype(stored))
    back = narrow.astype(array.dtype)
    source = np.ascontiguousarray(array)
    same = np.array_equal(back.reshape(-1).view(np.uint8), source.reshape(-1).view(np.uint8))
    return narrow if same else None


def value_range(array: np.ndarray) -> str:
    """``"low .. high"`` of an array, for messages about values that do not fit."""
    return f"{array.min()} .. {array.max()}" if array.size else "no values"
