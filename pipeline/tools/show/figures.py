"""The figures of ``ssmspine show``, in the spirit of the dataset README's sample visualization:
the three images, the label map in 11 distinct named colours with a legend, and the bone and disc
landmarks drawn on the image.

Every figure is laid out in whole pixels (panels, titles and margins below), so a PNG's size is
known in advance (:func:`sample_size`, :func:`grid_size`) and a data pixel maps to a known place
in it, which is what the tests check.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from pipeline.errors import UsageError
from pipeline.schema import IMAGE_FIELDS, LABEL_NAMES
from pipeline.tools.plotting import new_figure, save_png
from pipeline.tools.show.pictures import (
    LABEL_COLOURS,
    LEGEND_NAMES,
    Record,
    base_image,
    display_image,
    label_map,
    landmark_groups,
    overlay_rgb,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_MARGIN = 8  # px around and between panels
_TITLE = 26  # px above each panel for its title
_LEGEND_ROW = 22  # px per row of a grid's legend


def _layout_panel(
    fig: Figure, column: int, row: int, panel: int, width: int, height: int, label: str, top: int = 0
) -> Axes:
    """Axes for the panel at (column, row), placed in whole pixels below ``top`` px of heading."""
    left = _MARGIN + column * (panel + _MARGIN)
    upper = top + _MARGIN + _TITLE + row * (panel + _TITLE + _MARGIN)
    return fig.add_axes((left / width, 1 - (upper + panel) / height, panel / width, panel / height), label=label)


def sample_size(panel: int = 512) -> tuple[int, int]:
    """(width, height) in pixels of :func:`sample_figure`: 3 × 2 panels of ``panel`` pixels."""
    return 3 * panel + 4 * _MARGIN, 2 * (panel + _TITLE) + 3 * _MARGIN


def grid_size(samples: int, columns: int, panel: int = 256, title: bool = True) -> tuple[int, int]:
    """(width, height) in pixels of :func:`grid_figure` for ``samples`` panels in ``columns`` columns."""
    rows = math.ceil(samples / columns)
    width = columns * panel + (columns + 1) * _MARGIN
    return width, _grid_heading(title) + rows * (panel + _TITLE + _MARGIN) + _MARGIN + _legend_height(width)


def _grid_heading(title: bool) -> int:
    return 30 if title else 0


def _legend_columns(width: int) -> int:
    return max(1, min(len(LABEL_COLOURS), (width - 2 * _MARGIN) // 110))


def _legend_height(width: int) -> int:
    return math.ceil(len(LABEL_COLOURS) / _legend_columns(width)) * _LEGEND_ROW + 2 * _MARGIN


def _show_image(ax: Axes, rgb_or_grey: np.ndarray, title: str, panel: int, fontsize: float) -> None:
    native = rgb_or_grey.shape[0] == panel and rgb_or_grey.shape[1] == panel
    kwargs = {} if rgb_or_grey.ndim == 3 else {"cmap": "gray", "vmin": 0.0, "vmax": 1.0}
    ax.imshow(rgb_or_grey, interpolation="nearest" if native else "antialiased", **kwargs)
    ax.set_axis_off()
    ax.set_title(title, fontsize=fontsize, pad=4)


def _empty_panel(ax: Axes, title: str, fontsize: float) -> None:
    ax.set_axis_off()
    ax.set_title(title, fontsize=fontsize, pad=4)
    ax.text(0.5, 0.5, "absent", ha="center", va="center", color="0.5", transform=ax.transAxes)


def _draw_landmarks(ax: Axes, fields: Mapping[str, np.ndarray], shape: tuple[int, ...], size: float) -> None:
    """Landmark dots in their structure's colour (no rim: 236 points per vertebra are dense enough
    that a rim would turn the contour dark), limits kept to the image."""
    for name, points in landmark_groups(fields):
        colour = LABEL_COLOURS[name][1] if name in LABEL_COLOURS else "white"
        ax.scatter(points[:, 0], points[:, 1], s=size, c=colour, linewidths=0, zorder=3)
    ax.set_xlim(-0.5, shape[1] - 0.5)
    ax.set_ylim(shape[0] - 0.5, -0.5)


def _name_structures(ax: Axes, label: np.ndarray, fontsize: float) -> None:
    """Each structure's name at its centroid, white with a dark outline, readable on any colour."""
    from matplotlib import patheffects

    for value in range(1, len(LABEL_NAMES)):
        rows, cols = np.nonzero(label == value)
        if rows.size:
            ax.text(
                cols.mean(),
                rows.mean(),
                LABEL_NAMES[value],
                color="white",
                fontsize=fontsize,
                ha="center",
                va="center",
                fontweight="bold",
                path_effects=[patheffects.withStroke(linewidth=2, foreground="black")],
            )


def _legend_handles() -> list:
    from matplotlib.patches import Patch

    return [
        Patch(facecolor=hex_, edgecolor="black", linewidth=0.5, label=LEGEND_NAMES[name])
        for name, (_, hex_) in LABEL_COLOURS.items()
    ]


def sample_figure(record: Record, *, title: Sequence[str] = (), panel: int = 512) -> Figure:
    """The figure of one sample: raw, corrected and equalized images on top; below, the label
    map over the corrected image, the landmarks on it, and the legend with the key.

    At the default ``panel=512`` every image pixel is one PNG pixel, so nothing is resampled:
    one-pixel label edges and landmark offsets stay visible. ``title`` lines go under the key.
    Fields the record lacks leave their panel marked "absent".
    """
    key, fields = record
    width, height = sample_size(panel)
    fig = new_figure(width, height)
    fontsize = 11 if panel >= 384 else 8
    titles = {
        "img": "raw (img)",
        "img_corrected": "corrected (img_corrected)",
        "img_equalized": "equalized (img_equalized)",
    }
    for column, field in enumerate(IMAGE_FIELDS):
        ax = _layout_panel(fig, column, 0, panel, width, height, field)
        if field in fields:
            _show_image(ax, display_image(fields[field]), titles[field], panel, fontsize)
        else:
            _empty_panel(ax, titles[field], fontsize)
    base = base_image(fields)
    label = label_map(fields)
    labels_ax = _layout_panel(fig, 0, 1, panel, width, height, "labels")
    marks_ax = _layout_panel(fig, 1, 1, panel, width, height, "landmarks")
    if base is None:
        _empty_panel(labels_ax, "labels", fontsize)
        _empty_panel(marks_ax, "landmarks", fontsize)
    else:
        grey = display_image(base)
        _show_image(
            labels_ax,
            overlay_rgb(base, label),
            "labels (label)" if label is not None else "labels: absent",
            panel,
            fontsize,
        )
        if label is not None:
            _name_structures(labels_ax, label, fontsize * 0.75)
        _show_image(marks_ax, grey, "landmarks (bone, disk)", panel, fontsize)
        _draw_landmarks(marks_ax, fields, grey.shape, size=6.0 * panel / 512)
    legend_ax = _layout_panel(fig, 2, 1, panel, width, height, "legend")
    legend_ax.set_axis_off()
    legend_ax.text(0.04, 0.97, key, fontsize=fontsize * 1.6, fontweight="bold", va="top", transform=legend_ax.transAxes)
    for i, line in enumerate(title):
        legend_ax.text(
            0.04, 0.86 - 0.065 * i, line, fontsize=fontsize, va="top", color="0.25", transform=legend_ax.transAxes
        )
    legend_ax.legend(
        handles=_legend_handles(),
        loc="upper left",
        bbox_to_anchor=(0.02, 0.62),
        ncol=2,
        fontsize=fontsize * 1.1,
        title="labels and landmarks",
        title_fontsize=fontsize * 1.1,
        alignment="left",
        frameon=False,
        handlelength=1.6,
        handleheight=1.2,
        columnspacing=1.5,
        labelspacing=0.6,
    )
    return fig


def grid_figure(
    records: Sequence[Record], *, title: str | None = None, panel: int = 256, columns: int | None = None
) -> Figure:
    """``len(records)`` samples side by side, each the corrected image with labels and landmarks,
    and one legend below: a quick look for misaligned labels or landmarks across a split."""
    if not records:
        raise UsageError("grid_figure needs at least one record")
    columns = columns or min(len(records), 6)
    width, height = grid_size(len(records), columns, panel, title is not None)
    fig = new_figure(width, height)
    heading = _grid_heading(title is not None)
    if title is not None:
        fig.text(_MARGIN / width, 1 - (heading / 2 + _MARGIN / 2) / height, title, fontsize=12, va="center")
    fontsize = 9 if panel < 384 else 11
    for i, (key, fields) in enumerate(records):
        ax = _layout_panel(fig, i % columns, i // columns, panel, width, height, key, top=heading)
        base = base_image(fields)
        if base is None:
            _empty_panel(ax, key, fontsize)
            continue
        _show_image(ax, overlay_rgb(base, label_map(fields)), key, panel, fontsize)
        _draw_landmarks(ax, fields, display_image(base).shape, size=max(0.5, 6.0 * panel / 512))
    legend_height = _legend_height(width)
    fig.legend(
        handles=_legend_handles(),
        loc="center",
        ncol=_legend_columns(width),
        fontsize=9,
        frameon=False,
        bbox_to_anchor=(0.5, (legend_height / 2) / height),
        handlelength=1.4,
        columnspacing=1.2,
    )
    return fig


def render_sample(record: Record, path: str | os.PathLike, *, title: Sequence[str] = (), panel: int = 512) -> Path:
    """Write :func:`sample_figure` of ``record`` to ``path`` as a PNG; returns the path."""
    return save_png(sample_figure(record, title=title, panel=panel), path)


def render_grid(
    records: Sequence[Record],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    panel: int = 256,
    columns: int | None = None,
) -> Path:
    """Write :func:`grid_figure` of ``records`` to ``path`` as a PNG; returns the path."""
    return save_png(grid_figure(records, title=title, panel=panel, columns=columns), path)
