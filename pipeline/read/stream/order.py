"""Who reads which sample when: the epoch's order, its partition over ranks and workers, resumption.

Pure functions of a few integers, so every rank and DataLoader worker computes the same answer
without communicating, and each can be tested alone:

* **Order** (:func:`epoch_order`): epoch ``e`` visits the split in one permutation drawn from
  ``(seed, e)`` alone — the same on every rank, whatever the world size or worker count.
* **Partition** (:func:`rank_positions`, :func:`worker_batches`): of the epoch's *positions* not
  yet consumed, ``[start, N)``, rank ``r`` of ``W`` takes ``start + r, start + r + W, ...``. So
  after every rank has consumed ``c`` samples, exactly the positions ``[start, start + c·W)`` are
  done, and the progress of the whole job is one number (``position``). Global step ``t`` with
  per-rank batch ``B`` covers the contiguous window ``[start + t·W·B, start + (t+1)·W·B)`` of the
  order, whatever ``W`` is: resuming on another world size with the same global batch replays the
  same global batches. A rank's sequence is cut into batches; batch ``j`` goes to DataLoader
  worker ``j % num_workers``, which is the order the DataLoader collects them in, so the rank's
  sequence does not depend on ``num_workers``.
* **Equal lengths**: every rank takes ``ceil(R / W)`` of the ``R`` remaining positions; the last
  step is padded by wrapping around to the start of the epoch's order (at most ``W - 1``
  duplicate samples per epoch), and every item says which of its samples are padding
  (:func:`rank_padding`, ``__pad__``), so that an evaluation can count each sample once. With
  ``drop_last=True`` the tail that does not fill a whole global step (``W`` samples, or
  ``W·batch_size`` when the dataset batches) is left out instead — fewer than that many samples,
  different ones each epoch.
* **Shuffle quality** (:func:`source_neighbour_ratio`): how well an order breaks up samples that
  sit together in the shards, relative to a uniformly random permutation.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pipeline.errors import UsageError


def epoch_order(samples: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The global order of epoch ``epoch``: sample indices (manifest order) in visiting order.

    A uniform permutation seeded by ``(seed, epoch)`` only: every rank computes the same one, and it
    does not change with the world size, so ranks can take disjoint slices of it at any point.
    """
    if seed < 0 or epoch < 0:
        raise UsageError(f"seed and epoch must be non-negative, got seed={seed}, epoch={epoch}")
    if not shuffle:
        return np.arange(samples)
    return np.random.default_rng([seed, epoch]).permutation(samples)


def rank_share(remaining: int, world_size: int, batch_size: int | None = None, drop_last: bool = False) -> int:
    """How many of ``remaining`` positions each of ``world_size`` ranks takes (the same for all)."""
    if remaining <= 0:
        return 0
    if drop_last:
        step = world_size * (batch_size or 1)
        return remaining // step * (batch_size or 1)
    return -(-remaining // world_size)


def rank_positions(
    samples: int, start: int, rank: int, world_size: int, batch_size: int | None = None, drop_last: bool = False
) -> np.ndarray:
    """Positions in the epoch's order that ``rank`` visits, in order, when ``[0, start)`` are done.

    Positions ``>= samples`` are padding: position ``p`` stands for ``p % samples``.
    """
    share = rank_share(samples - start, world_size, batch_size, drop_last)
    return start + rank + world_size * np.arange(share, dtype=np.int64)


def rank_samples(
    samples: int,
    seed: int,
    epoch: int,
    rank: int,
    world_size: int,
    start: int = 0,
    batch_size: int | None = None,
    drop_last: bool = False,
    shuffle: bool = True,
) -> np.ndarray:
    """Sample indices (manifest order) that ``rank`` visits in epoch ``epoch``, from position ``start``."""
    positions = rank_positions(samples, start, rank, world_size, batch_size, drop_last)
    return epoch_order(samples, seed, epoch, shuffle)[positions % samples] if len(positions) else positions


def rank_rows(
    order: np.ndarray, start: int, rank: int, world_size: int, batch_size: int | None = None, drop_last: bool = False
) -> np.ndarray:
    """What ``rank`` visits of an epoch's global ``order`` (rows of any index, e.g. a mixture's,
    :mod:`pipeline.read.stream.mixing`), from position ``start``: :func:`rank_samples` for any order."""
    positions = rank_positions(len(order), start, rank, world_size, batch_size, drop_last)
    return np.asarray(order)[positions % len(order)] if len(positions) else positions


def rank_padding(
    samples: int, start: int, rank: int, world_size: int, batch_size: int | None = None, drop_last: bool = False
) -> np.ndarray:
    """Which of the samples :func:`rank_samples` gives ``rank`` are padding (a bool per sample):
    positions past the end of the epoch's order, which wrap around to repeat its first samples."""
    return rank_positions(samples, start, rank, world_size, batch_size, drop_last) >= samples


def worker_batches(share: int, batch_size: int, worker: int, num_workers: int) -> list[range]:
    """Rows of a rank's sequence that ``worker`` yields, as batches: batch ``j`` → worker ``j % W``.

    The DataLoader collects one item from each worker in turn, so this reproduces the rank's
    sequence exactly for any ``num_workers``.
    """
    starts = range(worker * batch_size, share, num_workers * batch_size)
    return [range(a, min(a + batch_size, share)) for a in starts]


def consumed_position(start: int, seen: int, world_size: int, samples: int) -> int:
    """Global position after every rank has consumed ``seen`` samples of a pass begun at ``start``."""
    return min(start + seen * world_size, samples)


def source_neighbour_ratio(
    sequence: Sequence[int], patient: Sequence[int], aug: Sequence[int], window: int = 16
) -> float:
    """How often samples that are neighbours in the source end up close together, relative to chance.

    Source neighbours are samples of the same patient whose shape numbers differ by one: they sit
    next to each other in the shards and look alike. The figure counts pairs of them at most
    ``window`` apart in ``sequence`` (16: about one batch), divided by the count expected if
    ``sequence`` were a uniformly random permutation of its samples. About 1 is as good as a
    shuffle gets; the source order itself scores about ``N / (2·window)``.
    """
    seq = np.asarray(sequence)
    p, a = np.asarray(patient)[seq], np.asarray(aug)[seq]
    observed, pairs = 0, 0
    for d in range(1, min(window, len(seq) - 1) + 1):
        close = (p[d:] == p[:-d]) & (np.abs(a[d:] - a[:-d]) == 1)
        observed += int(np.count_nonzero(close))
        pairs += len(seq) - d
    distinct = sorted(set(zip(p.tolist(), a.tolist())))
    neighbours = sum(1 for (p0, a0), (p1, a1) in zip(distinct, distinct[1:]) if p0 == p1 and a1 - a0 == 1)
    n = len(distinct)
    expected = pairs * 2 * neighbours / (n * (n - 1)) if n > 1 else 0.0
    return observed / expected if expected else 0.0
