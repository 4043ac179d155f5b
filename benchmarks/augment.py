"""A CPU augmentation of realistic cost for the benchmarks: elastic deformation, rotation and shift of
``img`` and ``label``, as the dataset's authors augment every training sample.

The authors use ``scipy.ndimage`` (a Gaussian-smoothed random displacement field, after Simard et
al. 2003, then interpolation); scipy is not a dependency here, so the same steps are done with torch:
uniform noise from the sample's generator, a separable Gaussian blur of it at full resolution
(``sigma`` pixels, truncated at 4 sigma as ``scipy.ndimage.gaussian_filter`` does), scaled to ``alpha``
pixels, added to a random rotation and shift, then ``grid_sample``: bilinear for the image,
nearest-neighbour for the label map (class indices must not be blended). About 30-60 ms per
512×512 sample on one core: far more than decoding it.

:class:`ElasticDeformation` follows the reader's transform contract (:mod:`pipeline.read.transforms`):
``transform(sample, rng) -> sample``, every random number from ``rng``, shapes and dtypes kept;
:class:`Augmented` applies it the per-file way, in the dataset's ``__getitem__``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from pipeline.read.transforms import sample_rng


@dataclass(frozen=True)
class ElasticDeformation:
    """Elastic deformation (``alpha`` px, smoothed over ``sigma`` px), rotation (±``degrees``) and
    shift (±``shift`` of the size) of the ``image`` fields (bilinear) and ``label`` fields (nearest)."""

    alpha: float = 20.0
    sigma: float = 8.0
    degrees: float = 10.0
    shift: float = 0.05
    image: tuple[str, ...] = ("img",)
    label: tuple[str, ...] = ("label",)

    def __call__(self, sample: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        present = [f for f in (*self.image, *self.label) if f in sample]
        if not present:
            return sample
        height, width = sample[present[0]].shape[-2:]
        grid = self.grid(height, width, rng)
        for field in present:
            values = sample[field]
            planes = torch.from_numpy(values).reshape(1, -1, height, width).float()
            mode = "bilinear" if field in self.image else "nearest"
            moved = F.grid_sample(planes, grid, mode=mode, padding_mode="zeros", align_corners=False)
            sample[field] = moved.reshape(values.shape).numpy().astype(values.dtype, copy=False)
        return sample

    def grid(self, height: int, width: int, rng: np.random.Generator) -> torch.Tensor:
        """The sampling grid ``(1, height, width, 2)`` in ``grid_sample``'s coordinates."""
        angle = math.radians(rng.uniform(-self.degrees, self.degrees))
        dx, dy = rng.uniform(-self.shift, self.shift, size=2) * 2  # in [-1, 1] coordinates
        theta = torch.tensor(
            [[math.cos(angle), -math.sin(angle), dx], [math.sin(angle), math.cos(angle), dy]], dtype=torch.float32
        )
        grid = F.affine_grid(theta[None], [1, 1, height, width], align_corners=False)
        noise = torch.from_numpy(rng.uniform(-1.0, 1.0, size=(2, height, width)).astype(np.float32))
        displacement = _gaussian_blur(noise, self.sigma) * self.alpha  # pixels, (2, h, w): x then y
        scale = torch.tensor([2.0 / width, 2.0 / height]).view(2, 1, 1)
        return grid + (displacement * scale).permute(1, 2, 0)[None]


def _gaussian_blur(planes: torch.Tensor, sigma: float) -> torch.Tensor:
    """``planes`` (c, h, w) blurred by a Gaussian of ``sigma`` pixels along both axes (reflected edges)."""
    radius = int(4 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    c = planes.shape[0]
    out = F.pad(planes[None], (radius, radius, 0, 0), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.pad(out, (0, 0, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return out[0]


class Augmented(Dataset):
    """The per-file way: ``dataset[i]`` (a dict of tensors with ``__key__``) augmented in
    ``__getitem__`` by ``transform``, with the generator a reader would give it in epoch 0."""

    def __init__(self, dataset: Any, transform: ElasticDeformation, seed: int = 0) -> None:
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: Mapping[str, Any] = self.dataset[index]
        key = item["__key__"]
        sample = {f: v.numpy() for f, v in item.items() if not f.startswith("__")}
        result = self.transform(sample, sample_rng(self.seed, 0, key))
        return {"__key__": key, **{f: torch.from_numpy(v) for f, v in result.items()}}
