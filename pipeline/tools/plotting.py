"""Matplotlib figures laid out in pixels, and their PNGs.

Figures are built on :class:`matplotlib.figure.Figure` directly, never through ``pyplot``: no
backend is selected, no global state is touched, and nothing needs a display. A figure is sized in
whole pixels at :data:`DPI`, so a PNG's size is known in advance and a data pixel maps to a known
place in it (which is what the tests check).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.atomic import write_bytes_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Dots per inch of every figure: 100, so that inches × 100 is pixels.
DPI = 100


def new_figure(width: int, height: int) -> Figure:
    """An empty white figure of ``width`` × ``height`` pixels, outside ``pyplot``."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")


def save_png(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as an RGB PNG of exactly its pixel size, atomically.

    RGB rather than matplotlib's RGBA (the background is opaque anyway) and no metadata: a
    tenth smaller, and the same sample gives the same bytes, so a committed README picture
    only changes when the picture does.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3]).save(buffer, format="PNG", optimize=True)
    write_bytes_atomic(path, buffer.getvalue())
    return Path(path)
