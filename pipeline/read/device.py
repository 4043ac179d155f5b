"""Moving a batch to the training device, widening compact fields there.

With ``compact=True`` the readers deliver label and masks in the narrow dtypes they are stored in
(uint8 rather than int64): a quarter to an eighth of the bytes to decode into, to copy between
processes and to move to the GPU. :func:`to_device` moves such a batch and widens each field on the
device to the dtype the training step expects, usually the dataset's ``source_dtypes``, where
widening is nearly free.

Pinned memory: a copy from page-locked host memory can overlap with compute (``non_blocking``);
from pageable memory it cannot, and pinning a batch on the way (``tensor.pin_memory()``, as this
function did until 2026-12) is itself a full copy into freshly allocated page-locked memory, which
PyTorch's own guide ("A guide on good usage of non_blocking and pin_memory()") measures as slower
than a plain ``.to(device)``. So memory already pinned (``DataLoader(pin_memory=True)``, whose pin
thread pins each batch off the training loop) is copied without waiting, and anything else with a
plain copy. The readers' reused batch slots are not pinned on purpose: a copy without waiting from
a slot would race with the slot's reuse for the next batch, which starts as soon as the loop lets go
of the batch, unless every slot also carried a CUDA event to wait for. ``examples/gpu_delivery.py``
measures the ways (plain, ``pin_memory=True``, pinning on the way) on a GPU.
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

    Tensors already in pinned memory are copied with ``non_blocking`` (the caller's stream orders
    the copy before any kernel that uses the result); others with a plain copy, never pinned on the
    way (see the module docstring). Values that are not tensors (``__key__``) are passed on as they are.
    """
    device = torch.device(device)
    moved: dict[str, Any] = {}
    for name, value in batch.items():
        if not isinstance(value, torch.Tensor):
            moved[name] = value
            continue
        value = value.to(device, non_blocking=non_blocking and value.is_pinned())
        wanted = None if dtypes is None else dtypes.get(name)
        moved[name] = value if wanted is None or value.dtype == wanted else value.to(wanted)
    return moved
