"""From a record's arrays to what a picture shows: colours, the label map, display images, the
overlay and the landmark groups. Plain numpy (matplotlib only for its colour names); the figures
that place them are in :mod:`pipeline.tools.show.figures`.

Why the care with dtypes: an output keeps the source's dtypes, so labels may be float or integer,
(1, H, W) or (H, W), images any range; a picture of odd data should still show it, not fail.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from pipeline.errors import OutputError
from pipeline.schema import BONE_NAMES, DISC_NAMES, LABEL_NAMES

#: A record as it travels between floors: ``(key, {field: numpy array})``.
Record = tuple[str, Mapping[str, np.ndarray]]

#: One colour per structure (labels 1–11), named, distinct from each other and from the grey
#: image; neighbours along the spine (L1, D1, L2, D2, ...) differ in hue. After Trubetskoy's
#: "20 simple, distinct colours".
LABEL_COLOURS: dict[str, tuple[str, str]] = {
    "L1": ("red", "#e6194b"),
    "L2": ("orange", "#f58231"),
    "L3": ("yellow", "#ffe119"),
    "L4": ("green", "#3cb44b"),
    "L5": ("blue", "#4363d8"),
    "S1": ("purple", "#911eb4"),
    "D1": ("cyan", "#42d4f4"),
    "D2": ("magenta", "#f032e6"),
    "D3": ("lime", "#bfef45"),
    "D4": ("pink", "#fabed4"),
    "D5": ("teal", "#469990"),
}
#: Legend text of each structure; discs also name the vertebrae they sit between.
LEGEND_NAMES: dict[str, str] = {
    **{b: b for b in BONE_NAMES},
    **{d: f"{d} ({a}/{b})" for d, a, b in zip(DISC_NAMES, BONE_NAMES, BONE_NAMES[1:])},
}
#: How far a labelled pixel is blended from the grey image towards its structure's colour.
OVERLAY_ALPHA = 0.45


def label_colours_rgb() -> np.ndarray:
    """(12, 3) float RGB in [0, 1]: row ``v`` is the colour of label value ``v`` (row 0 unused)."""
    from matplotlib.colors import to_rgb

    return np.array([(0.0, 0.0, 0.0), *(to_rgb(hex_) for _, hex_ in LABEL_COLOURS.values())])


def label_map(fields: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The label image (H, W) as int64 values 0–11, whatever the stored dtype.

    ``label`` may be (1, H, W) or (H, W), float or integer; values outside 1–11 count as
    background. Without a ``label`` field, the 11 masks (``mask``, or ``bone_mask`` and
    ``disk_mask``) are combined instead. None if the record has neither.
    """
    if "label" in fields:
        label = np.asarray(fields["label"])
        while label.ndim > 2 and label.shape[0] == 1:
            label = label[0]
        if label.ndim != 2:
            raise OutputError(f"label has shape {np.shape(fields['label'])}; expected (1, H, W) or (H, W)")
        values = np.rint(label).astype(np.int64) if label.dtype.kind == "f" else label.astype(np.int64)
        values[(values < 0) | (values >= len(LABEL_NAMES))] = 0
        return values
    masks = None
    if "mask" in fields:
        masks = np.asarray(fields["mask"])
    elif "bone_mask" in fields and "disk_mask" in fields:
        masks = np.concatenate([np.asarray(fields["bone_mask"]), np.asarray(fields["disk_mask"])])
    if masks is None:
        return None
    on = masks >= 0.5 if masks.dtype.kind == "f" else masks.astype(bool)
    return np.where(on.any(axis=0), on.argmax(axis=0) + 1, 0).astype(np.int64)


def display_image(image: np.ndarray) -> np.ndarray:
    """A 2-D float image in [0, 1] for display: [0, 1] float data as is, anything else min–max scaled."""
    data = np.asarray(image, dtype=np.float64)
    while data.ndim > 2 and data.shape[0] == 1:
        data = data[0]
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return np.zeros(data.shape)
    low, high = float(finite.min()), float(finite.max())
    if np.asarray(image).dtype.kind == "f" and low >= 0.0 and high <= 1.0:
        low, high = 0.0, 1.0
    scaled = (data - low) / (high - low) if high > low else np.zeros_like(data)
    return np.clip(np.nan_to_num(scaled), 0.0, 1.0)


def overlay_rgb(image: np.ndarray, label: np.ndarray | None, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """(H, W, 3) RGB: the grey image with each labelled pixel blended towards its structure's colour."""
    grey = display_image(image)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if label is not None:
        if label.shape != grey.shape:
            raise OutputError(f"label map {label.shape} and image {grey.shape} differ in size")
        on = label > 0
        rgb[on] = (1 - alpha) * rgb[on] + alpha * label_colours_rgb()[label[on]]
    return rgb


def landmark_groups(fields: Mapping[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """``(structure name, (N, 2) x/y points)`` for each vertebra (``bone``) and disc (``disk``).

    Points are pixel coordinates, x the column and y the row. A landmark array that is not
    (structures, points, 2) with the documented number of structures is drawn as one group
    named after its field, so odd data still shows up rather than failing.
    """
    groups = []
    for field, names in (("bone", BONE_NAMES), ("disk", DISC_NAMES)):
        if field not in fields:
            continue
        points = np.asarray(fields[field], dtype=np.float64)
        if points.ndim == 3 and points.shape[0] == len(names) and points.shape[2] == 2:
            groups += [(name, p) for name, p in zip(names, points)]
        elif points.size % 2 == 0:
            groups.append((field, points.reshape(-1, 2)))
    return [(name, p[np.isfinite(p).all(axis=1)]) for name, p in groups]


def base_image(fields: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The image labels and landmarks are drawn on: the corrected one, else any other."""
    for field in ("img_corrected", "img_equalized", "img"):
        if field in fields:
            return fields[field]
    return None
