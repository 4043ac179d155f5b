"""Per-sample transforms (augmentation) where decoding runs: the contract, the random generator, batching the results.

Augmentation on the CPU (elastic deformation, shift, rotation) costs far more than decoding, so it
belongs where decoding runs — on the decode threads, in DataLoader workers — rather than in the
training loop. A reader given ``transform=`` calls it once per sample, right after decoding it::

    transform(sample: dict[str, numpy.ndarray], rng: numpy.random.Generator) -> Mapping[str, array]

* ``sample`` holds the decoded fields asked for, as fresh writable arrays of the stored shape and
  dtype that belong to this call alone: modify them in place and return them, or return new
  arrays (numpy arrays or CPU tensors; C-contiguity is not required). The result may drop fields,
  add new ones, and change shapes and dtypes (numeric or bool only); names beginning ``__`` are the
  reader's (``__key__``, ``__pad__``).
* ``rng`` is ``numpy.random.default_rng`` seeded from ``(seed, epoch, key)`` (:func:`sample_rng`,
  a stable hash of the key, not Python's ``hash``): the same augmentation for a sample in a given
  epoch whatever the number of ranks, DataLoader workers or decode threads, and after a mid-epoch
  or elastic resume. Draw every random number from it; global random state (``random``,
  ``np.random``, torch's) is neither seeded per sample nor safe to share between threads.
* It runs on several decode threads at once, so it must be thread-safe (a pure function of its
  arguments is); numpy and torch release the GIL in their heavy loops, so threads do run in parallel.
  It travels to DataLoader workers with the dataset: with spawned workers it must pickle (a
  module-level function or a dataclass instance, not a lambda).
* Batches (a dataset-level ``batch_size``, or ``ZarrDataset`` batches) stack the results into a
  reused slot of memory whose layout is taken from the results themselves: every sample of a batch
  must come out with the same fields, shapes and dtypes (a batch cannot hold two shapes), else a
  ``UsageError`` names the sample and field. A fixed-size random crop is fine; a crop whose size
  varies is not, unless items are single samples (``batch_size=None``) collated by your own code.

``transform(sample) -> Mapping`` (one argument: a MONAI ``Compose`` of dictionary transforms,
torchvision v2 transforms, a plain function) works too: it gets the fields as torch tensors sharing
the decoded arrays and is seeded per sample from the same generator, MONAI objects through their
``set_random_state`` (a copy per thread, in parallel), anything else through torch's, ``random``'s and
numpy's global generators under one lock (one call at a time per process):
:mod:`pipeline.read.transform_kinds`. Which of the two a transform is, its signature says, once,
when the reader is built (:func:`as_transform`); its results are checked as above.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from pipeline.errors import UsageError
from pipeline.read.batch_memory.memory import ArraySpec, Specs
from pipeline.read.batch_memory.pool import SlotPool, slot_pool_for
from pipeline.read.transform_kinds import OneArgument, OneArgumentTransform, arguments_taken

#: ``transform(sample, rng) -> sample``: see the module docstring for the contract.
TwoArgumentTransform = Callable[[dict[str, np.ndarray], np.random.Generator], Mapping[str, Any]]
#: What ``transform=`` takes: ``transform(sample, rng)`` or ``transform(sample)``.
Transform = TwoArgumentTransform | OneArgumentTransform
#: Numeric and bool kinds: what a batch slot and torch hold.
_KINDS = frozenset("biuf")


def sample_rng(seed: int, epoch: int, key: str, appearance: int = 0) -> np.random.Generator:
    """The generator a transform gets for sample ``key`` in ``epoch``: a function of the three
    alone (the key through BLAKE2b, so the same in every process, Python and platform), and, for
    an upsampled sample's later appearances in a mixed epoch (1, 2, ...), of which one it is."""
    words = np.frombuffer(hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest(), "<u4")
    later = [int(appearance)] if appearance else []  # the first appearance: the generator as ever
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), *map(int, words), *later]))


def as_transform(transform: Transform | None) -> TwoArgumentTransform | None:
    """``transform`` as the readers call it, ``(sample, rng)``: decided once, from its signature,
    when a reader is built, so that a transform that cannot work fails there and not in a worker."""
    if transform is None:
        return None
    if not callable(transform):
        raise UsageError(f"transform must be callable, got a {type(transform).__name__}")
    taken = arguments_taken(transform)
    if taken == 2:
        return transform  # type: ignore[return-value]
    if taken == 1:
        return OneArgument(transform)  # type: ignore[arg-type]
    name = getattr(transform, "__qualname__", type(transform).__name__)
    raise UsageError(
        f"transform {name}: its signature does not say whether it takes (sample, rng) or (sample); "
        "pass def transform(sample, rng) (numpy arrays, a numpy Generator) or def transform(sample) (torch tensors)"
    )


def apply_transform(
    transform: TwoArgumentTransform,
    sample: dict[str, np.ndarray],
    key: str,
    seed: int,
    epoch: int,
    appearance: int = 0,
) -> dict[str, np.ndarray]:
    """``transform(sample, rng)`` for sample ``key`` (its ``appearance`` in the epoch, see
    :func:`sample_rng`), its result checked and as numpy arrays."""
    result = transform(sample, sample_rng(seed, epoch, key, appearance))
    if not isinstance(result, Mapping):
        raise UsageError(f"{key}: the transform returned a {type(result).__name__}, not a dict of arrays")
    out = {}
    for name, value in result.items():
        if not isinstance(name, str) or name.startswith("__"):
            raise UsageError(
                f"{key}: the transform returned the field name {name!r}; names beginning __ are the reader's"
            )
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        if array.dtype.kind not in _KINDS:
            raise UsageError(f"{key}: the transform returned {name} of dtype {array.dtype}; numbers or bools only")
        out[name] = array
    return out


def tensors_of(arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """A single sample's transformed fields as tensors (copied only where torch cannot share them)."""
    return {
        f: torch.from_numpy(a if a.flags.c_contiguous and a.flags.writeable else a.copy()) for f, a in arrays.items()
    }


def specs_of(arrays: Mapping[str, np.ndarray]) -> dict[str, ArraySpec]:
    return {f: ArraySpec(tuple(a.shape), a.dtype) for f, a in arrays.items()}


def stack_into_slot(
    pool: SlotPool | None,
    results: Sequence[Mapping[str, np.ndarray]],
    keys: list[str],
    pad: list[bool],
    shared: bool,
    capacity: int = 0,
) -> tuple[SlotPool, Any]:
    """The transformed samples of a batch copied into a slot of ``pool`` (or of a new pool of slots
    for ``capacity`` samples, when ``pool`` is None or holds other fields, shapes or dtypes):
    ``(pool, SharedBatch)``. The copy is cheap next to any transform worth running here."""
    specs = specs_of(results[0])
    for key, result in zip(keys, results):
        if specs_of(result) != specs:
            differ = sorted(f for f in {*specs, *result} if specs.get(f) != specs_of(result).get(f))
            raise UsageError(
                f"{key}: the transform returned {_describe(result, differ)} but {_describe_specs(specs, differ)} "
                f"for {keys[0]} in the same batch; a batch needs one shape and dtype per field"
            )
    pool = slot_pool_for(pool, specs, len(results), shared, capacity)
    batch = pool.batch(len(results), keys, pad)
    for row, result in enumerate(results):
        for field, array in batch.arrays.items():
            np.copyto(array[row], result[field])
    return pool, batch


def _describe(arrays: Mapping[str, np.ndarray], fields: list[str]) -> str:
    return _describe_specs(specs_of(arrays), fields)


def _describe_specs(specs: Specs, fields: list[str]) -> str:
    parts = [f"{f} {specs[f][0]} {specs[f][1]}" if f in specs else f"no {f}" for f in fields]
    return ", ".join(parts)
