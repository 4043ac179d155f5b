"""One-argument transforms as users already write them — a MONAI ``Compose`` of dictionary
transforms, torchvision v2 transforms, a plain function of the sample — made deterministic per
sample like the two-argument ones.

``transform(sample) -> Mapping`` gets the sample's fields as torch tensors sharing the decoded
arrays (``torch.from_numpy``: MONAI and torchvision v2 both take tensors) and is seeded from the
seed ``seed_from(sample_rng(seed, epoch, key))``, the same for a sample in an epoch wherever and
whenever it runs (threads, DataLoader workers, after a resume). How it is seeded depends on where its
random numbers come from:

* MONAI (an object with ``set_random_state``: ``Randomizable``, or ``Compose``, which seeds its
  children from its own): each decode thread calls its own deep copy, made on the thread's first
  call, after ``set_random_state(seed=...)``. Threads share no state and run in parallel.
* Anything else (torchvision v2 and most plain functions draw from torch's global generator, and
  no argument can seed that per sample): calls are serialised by one lock per process, each inside
  ``torch.random.fork_rng(devices=[])`` with torch's CPU generator, ``random`` and numpy's legacy
  ``np.random`` seeded, and all three restored after. The trade-off: such transforms run on one
  decode thread at a time (more DataLoader workers still run in parallel), and in the training
  process itself (no workers) the loop's own draws from those global generators during a
  transform come from the sample's stream and are then undone: use DataLoader workers, or write
  the transform with two arguments, ``transform(sample, rng)``, which runs in parallel and
  touches no global state. CUDA generators are neither seeded nor touched.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import os
import random
import threading
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch

#: Seeds handed to MONAI, torch and ``random`` lie in ``[0, SEED_BOUND)`` (MONAI's and numpy's legacy bound).
SEED_BOUND = 2**32
#: ``transform(sample) -> sample``, on torch tensors.
OneArgumentTransform = Callable[[dict[str, torch.Tensor]], Mapping[str, Any]]

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_GLOBAL_RANDOM = threading.Lock()


def _new_lock_after_fork() -> None:
    """A lock held by a parent's thread at a fork would never be released in the child."""
    global _GLOBAL_RANDOM
    _GLOBAL_RANDOM = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_after_fork)


def seed_from(rng: np.random.Generator) -> int:
    """The seed a one-argument transform's random state gets from the sample's generator."""
    return int(rng.integers(SEED_BOUND))


#: Names a user gives a second, optional parameter that takes the generator: ``def t(sample, rng=None)``
#: was called with the sample's generator before one-argument transforms existed, and still is.
GENERATOR_NAMES = frozenset({"rng", "generator", "random_state"})


def arguments_taken(transform: Any) -> int | None:
    """How many arguments ``transform`` is called with: 1 for MONAI's transforms (``Compose.__call__
    (input_, start=0, ...)``, ``__call__(data, lazy=None)``), which take a dictionary and nothing of
    ours; 2 when its signature has two required positional parameters, or a second, optional one
    named for a generator (``rng=None``); 1 when it has exactly one required (its other parameters
    are its own options), or none but ``*inputs`` on a ``torch.nn.Module``'s ``forward``
    (torchvision v2's, which transforms any number of inputs); None when the signature cannot say
    (uninspectable, ``*args`` alone, more than two required, a required keyword)."""
    if type(transform).__module__.split(".")[0] == "monai":
        return 1
    target = transform.forward if isinstance(transform, torch.nn.Module) else transform
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return None
    positional = [p for p in parameters if p.kind in _POSITIONAL]
    required = [p for p in positional if p.default is p.empty]
    if any(p.kind is p.KEYWORD_ONLY and p.default is p.empty for p in parameters) or len(required) > 2:
        return None
    variadic = any(p.kind is p.VAR_POSITIONAL for p in parameters)
    if not required:
        return 1 if variadic and isinstance(transform, torch.nn.Module) else None
    if len(required) == 1 and len(positional) > 1 and positional[1].name in GENERATOR_NAMES:
        return 2
    return len(required)


class OneArgument:
    """A one-argument transform called as the readers call every transform, ``(sample, rng)``.

    MONAI objects: a deep copy per decode thread, seeded per sample (parallel). Anything else: torch's,
    ``random``'s and numpy's global generators seeded per sample under one process-wide lock (serial).
    The per-thread copies never pickle: a DataLoader worker makes its own.
    """

    def __init__(self, transform: OneArgumentTransform) -> None:
        self.transform = transform
        self.per_thread = callable(getattr(transform, "set_random_state", None))
        self._copies = threading.local()

    def __call__(self, sample: dict[str, np.ndarray], rng: np.random.Generator) -> Mapping[str, Any]:
        tensors = {field: torch.from_numpy(array) for field, array in sample.items()}
        seed = seed_from(rng)
        if self.per_thread:
            mine = self._own_copy()
            mine.set_random_state(seed=seed)
            return mine(tensors)
        with global_generators_seeded(seed):
            return self.transform(tensors)

    def _own_copy(self) -> Any:
        mine = getattr(self._copies, "transform", None)
        if mine is None:
            mine = self._copies.transform = copy.deepcopy(self.transform)
        return mine

    def __getstate__(self) -> dict[str, Any]:
        return {"transform": self.transform, "per_thread": self.per_thread}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.transform, self.per_thread = state["transform"], state["per_thread"]
        self._copies = threading.local()

    def __repr__(self) -> str:
        how = (
            "a copy per decode thread, seeded per sample by set_random_state"
            if self.per_thread
            else "one call at a time per process, torch/random/np.random seeded per sample"
        )
        return f"OneArgument({type(self.transform).__name__}: {how})"


@contextlib.contextmanager
def global_generators_seeded(seed: int) -> Iterator[None]:
    """Torch's CPU generator, ``random`` and numpy's legacy generator seeded with ``seed`` for the
    block alone, which no other thread of this process runs through at the same time."""
    with _GLOBAL_RANDOM, torch.random.fork_rng(devices=[]):
        python, legacy = random.getstate(), np.random.get_state()
        torch.default_generator.manual_seed(seed)  # not torch.manual_seed: that would reseed CUDA too
        random.seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(legacy)
