"""The resumption state of a :class:`~pipeline.read.stream.StreamingDataset`: a few numbers, the same on every rank.

Which dataset and order a state belongs to is checked when it is loaded: the split, its keys
(by digest), the seed and whether it shuffles, and for a mixture of sources how it draws from them;
the world size is informative only, since a job may resume on another number of ranks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, NamedTuple

from pipeline.errors import UsageError

STATE_FORMAT = "ssmspine-stream-state"
STATE_VERSION = 1


@dataclass(frozen=True)
class OrderIdentity:
    """What a state must match to be loaded: the split's samples and the order drawn over them."""

    split: str  # several sources: their splits joined by "+"
    samples: int  # positions per epoch
    keys_sha256: str  # of the keys the order indexes (every source's, one after another)
    seed: int
    shuffle: bool
    #: what fixes a mixture's order beyond those keys (:meth:`pipeline.read.stream.mixing.Mixture.describe`);
    #: None for a plain order, as in every state saved before mixtures, which so still load
    mixture: str | None = None


class SavedPosition(NamedTuple):
    """Where a saved state stands: the epoch, the global position in it, and, for a state saved
    exactly as epoch ``ended_epoch`` ended (``epoch`` is then the next one, at position 0), that
    epoch, so that a loop that resumes in it (``set_epoch(ended_epoch)``) finds it done."""

    epoch: int
    position: int
    ended_epoch: int | None = None


def state_record(identity: OrderIdentity, saved: SavedPosition, world_size: int) -> dict:
    """The JSON-serialisable state: format, identity, epoch and global position."""
    return {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        **asdict(identity),
        "epoch": saved.epoch,
        "position": saved.position,
        "ended_epoch": saved.ended_epoch,  # absent from states saved before 2026-12: None
        "world_size": world_size,  # informative: any world size may load the state
    }


def check_identity(state: Mapping[str, Any], identity: OrderIdentity) -> None:
    """A :class:`UsageError` unless ``state`` was saved for the same split, keys, seed and shuffle."""
    differ = {k: (state.get(k), v) for k, v in asdict(identity).items() if state.get(k) != v}
    if differ:
        raise UsageError(f"the state belongs to another dataset or order: (saved, here) = {differ}")


def check_state(state: Mapping[str, Any], identity: OrderIdentity) -> SavedPosition:
    """Where a state made by :func:`state_record` for the same identity stands, else a UsageError."""
    if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
        raise UsageError(f"not a {STATE_FORMAT} v{STATE_VERSION} state: {dict(state)!r}")
    check_identity(state, identity)
    position = int(state["position"])
    if not 0 <= position <= identity.samples:
        raise UsageError(f"position {position} is outside [0, {identity.samples}]")
    ended = state.get("ended_epoch")
    return SavedPosition(int(state["epoch"]), position, None if ended is None else int(ended))
