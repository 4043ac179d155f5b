"""Moving a batch to the training device, widening compact fields there.

With ``compact=True`` the readers deliver label and masks in the narrow dtypes they are stored in
(uint8 rather than int64): a quarter to an eighth of the bytes to decode into, to copy between
processes and to move to the GPU. :func:`to_device` moves such a batch (from pinned memory, without
waiting) and widens each field on the device to the dtype the training step expects, usually the
dataset's ``source_dtypes``, where widening is nearly free.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from pipeline.errors import OutputError


def torch_dtypes(dtypes: Mapping[str, np.dtype]) -> dict[str, torch.dtype]:
    """The torch dtype of each numpy dtype; one that torch lacks is an :class:`OutputError`."""
    try:
        return {f: torch.from_numpy(np.empty(0, dt)).dtype for f, dt in dtypes.items()}
    except TypeError as exc:
        raise OutputError(f"a field's dtype has no torch equivalent ({exc})") from exc


def to_device(
    batch: Mapping[str, Any],
    device: torch.device | str,
    dtypes: Mapping[str, torch.dtype] | None = None,
    non_blocking: bool = True,
) -> dict[str, Any]:
    """``batch`` (a reader's sample or batch) with its tensors on ``device``, each field of
    ``dtypes`` (e.g. ``ds.source_dtypes``) widened to that dtype on the device.

    For a CUDA device, CPU tensors are pinned first (unless they already are) so that the copy
    is asynchronous with ``non_blocking``: the caller's stream orders it before any kernel that
    uses the result. Values that are not tensors (``__key__``) are passed on as they are.
    """
    device = torch.device(device)
    moved: dict[str, Any] = {}
    for name, value in batch.items():
        if not isinstance(value, torch.Tensor):
            moved[name] = value
            continue
        if device.type == "cuda" and value.device.type == "cpu" and not value.is_pinned():
            value = value.pin_memory()
        value = value.to(device, non_blocking=non_blocking)
        wanted = None if dtypes is None else dtypes.get(name)
        moved[name] = value if wanted is None or value.dtype == wanted else value.to(wanted)
    return moved
