"""The epoch's global order over several sources (outputs, splits, subsets) mixed in given proportions.

Pure functions of a few integers, like :mod:`pipeline.read.stream.order`, whose partition over ranks
and workers, padding and resumption then apply unchanged to positions of this order: a mixture
only changes which row each position names and how many positions an epoch has (``epoch_size``).

* **Rows**: the sources' samples are numbered one source after another (source ``s`` holds rows
  ``[start_s, start_s + size_s)``), as the combined index lists them.
* **Counts** (:func:`source_counts`): source ``s`` fills ``count_s`` positions of each epoch,
  ``epoch_size · weight_s / Σ weight`` rounded by largest remainder (ties to the earlier source), so
  the counts sum to ``epoch_size`` exactly and are the same every epoch. Without weights, each
  source counts as its size: every sample once per epoch.
* **Draws** (:func:`source_draws`): source ``s`` takes ``count_s // size_s`` whole permutations of
  its rows and the first ``count_s % size_s`` of one more, each seeded by ``(seed, epoch, s)``:
  within an epoch no sample appears more than once more than any other of its source. A source
  drawn below its size shows a different random part of itself each epoch (every sample in
  expectation equally often; no cross-epoch bookkeeping, so any epoch is computed alone).
* **Order** (:meth:`Mixture.order`): the draws, concatenated, shuffled by ``(seed, epoch)``. When
  every count equals its size (one source as it is, a subset, or several concatenated) the order is
  :func:`~pipeline.read.stream.order.epoch_order` over all rows: for one whole source exactly the
  order of a dataset without mixing, so its saved states stay valid.
* ``shuffle=False``: rows in order, each source's first ``count_s`` (cycling), source after source.

An upsampled sample may appear more than once in an epoch: it is the same key, read again; a
transform sees each appearance as a sample of its own (:meth:`Mixture.draws` numbers them, and the
number seeds the transform's generator with the key), so upsampling adds augmented variety.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import numpy as np

from pipeline.errors import UsageError
from pipeline.read.stream.order import epoch_order

#: Keeps the draws' generators apart from the epoch order's, which is seeded by ``(seed, epoch)``.
DRAWS = 0x6D6978


def source_counts(epoch_size: int, weights: Sequence[float]) -> list[int]:
    """Positions each source fills per epoch: ``epoch_size`` split in proportion to ``weights``,
    rounded by largest remainder so that they sum to ``epoch_size``."""
    if epoch_size < 1:
        raise UsageError(f"epoch_size must be at least 1, got {epoch_size}")
    if not weights or any(not math.isfinite(w) or w <= 0 for w in weights):
        raise UsageError(f"weights must be positive and finite, got {list(weights)}")
    exact = [Fraction(w) for w in weights]
    total = sum(exact)
    quotas = [epoch_size * w / total for w in exact]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(quotas)), key=lambda s: (-(quotas[s] - counts[s]), s))
    for s in by_remainder[: epoch_size - sum(counts)]:
        counts[s] += 1
    return counts


def source_draws(size: int, count: int, seed: int, epoch: int, source: int, shuffle: bool = True) -> np.ndarray:
    """The rows (``0..size-1``) source ``source`` contributes to epoch ``epoch``: ``count`` of them,
    whole permutations first, then the start of one more."""
    whole, rest = divmod(count, size)
    if not shuffle:
        return np.concatenate([np.tile(np.arange(size, dtype=np.int64), whole), np.arange(rest, dtype=np.int64)])
    rng = np.random.default_rng([seed, epoch, source, DRAWS])
    parts = [rng.permutation(size) for _ in range(whole)]
    if rest:
        parts.append(rng.permutation(size)[:rest])
    return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)


@dataclass(frozen=True)
class Mixture:
    """How an epoch draws from the sources: each one's rows (``sizes``) and positions (``counts``)."""

    sizes: tuple[int, ...]
    counts: tuple[int, ...]

    @classmethod
    def of(cls, sizes: Sequence[int], weights: Sequence[float | None], epoch_size: int | None) -> "Mixture":
        """The mixture of sources of ``sizes`` rows: with ``weights`` (all given, or all None:
        each source as much as its size) over ``epoch_size`` positions (None: the sum of the sizes)."""
        given = [w is not None for w in weights]
        if any(given) and not all(given):
            raise UsageError("give every source a weight, or none (each then counts as its size)")
        if epoch_size is not None and (isinstance(epoch_size, bool) or not isinstance(epoch_size, int)):
            raise UsageError(f"epoch_size must be an int, got {epoch_size!r}")
        size = sum(sizes) if epoch_size is None else epoch_size
        counts = source_counts(size, [float(w) for w in weights] if all(given) else list(sizes))  # type: ignore[arg-type]
        return cls(tuple(int(n) for n in sizes), tuple(counts))

    @property
    def samples(self) -> int:
        """Positions per epoch (the epoch's length)."""
        return sum(self.counts)

    @property
    def plain(self) -> bool:
        """Every source fills as many positions as it has rows: a plain permutation of all rows."""
        return self.counts == self.sizes

    def order(self, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
        """Epoch ``epoch``'s global order: rows (of the combined index) in visiting order."""
        if self.plain:
            return epoch_order(sum(self.sizes), seed, epoch, shuffle)
        if seed < 0 or epoch < 0:
            raise UsageError(f"seed and epoch must be non-negative, got seed={seed}, epoch={epoch}")
        starts = np.cumsum((0, *self.sizes[:-1]))
        drawn = np.concatenate(
            [
                int(start) + source_draws(size, count, seed, epoch, s, shuffle)
                for s, (start, size, count) in enumerate(zip(starts, self.sizes, self.counts))
            ]
        )
        if not shuffle:
            return drawn
        return drawn[np.random.default_rng([seed, epoch]).permutation(len(drawn))]

    def describe(self, splits: Sequence[str]) -> str | None:
        """What fixes the order beyond the rows' keys, for a saved state (None when plain):
        ``train:15/12 + test:5/3`` is 15 positions drawn from 12 rows, then 5 from 3."""
        if self.plain:
            return None
        return " + ".join(f"{split}:{count}/{size}" for split, size, count in zip(splits, self.sizes, self.counts))

    def draws(self, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
        """For each position of :meth:`order`, which appearance of its sample it is in the epoch:
        0 for a sample's first, 1, 2, ... for an upsampled sample's later ones (its source's draws
        are whole permutations, so draw ``j`` of a source of ``size`` rows is appearance ``j // size``)."""
        if self.plain:
            return np.zeros(self.samples, np.int64)
        cycles = np.concatenate(
            [np.arange(count, dtype=np.int64) // size for size, count in zip(self.sizes, self.counts)]
        )
        return cycles[np.random.default_rng([seed, epoch]).permutation(len(cycles))] if shuffle else cycles
