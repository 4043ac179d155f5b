"""Subsets of a split: the samples both readers keep when given ``patients=``, ``keys=`` or ``where=``.

Why here, answered from the manifest alone: every reader already reads it, it lists each sample's
key, patient, virtual shape, Zarr row, tar shard and source member, and choosing from it touches
no image data. Both readers take the same three options and keep the same samples, in the
split's (manifest) order, whatever order the options name them in: a subset is a smaller split,
not a reordering. Several options together keep the samples that satisfy all of them.

Unknown keys or patients are an error (:class:`~pipeline.errors.NotFoundError` naming them) rather
than an empty match, since a typo would otherwise train on less data without a word; a subset that
keeps nothing is a :class:`~pipeline.errors.UsageError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple

import numpy as np

from pipeline.errors import NotFoundError, UsageError
from pipeline.store.manifest import SplitEntry


class SampleRecord(NamedTuple):
    """What the manifest says of one sample: the argument of a ``where=`` predicate.

    ``index`` is its position in the split (manifest order), ``row`` its row in the split's Zarr
    arrays, ``shard`` the number of its tar shard in the split, ``archive``/``member`` where it was
    converted from, ``warnings`` the content warnings the conversion recorded for it.
    """

    key: str
    split: str
    index: int
    patient: int
    aug: int
    row: int
    shard: int
    archive: str
    member: str
    warnings: tuple[str, ...]


#: The ``where=`` predicate: keep the samples for which it returns True.
Predicate = Callable[[SampleRecord], bool]


def sample_records(entry: SplitEntry, split: str) -> list[SampleRecord]:
    """Every sample of the split as a :class:`SampleRecord`, in manifest order."""
    shard_of = [number for number, shard in enumerate(entry.shards) for _ in shard.keys]
    return [
        SampleRecord(
            key=key,
            split=split,
            index=i,
            patient=int(entry.patient[i]),
            aug=int(entry.aug[i]),
            row=int(entry.rows[i]),
            shard=shard_of[i] if i < len(shard_of) else -1,
            archive=entry.members[i].archive,
            member=entry.members[i].member,
            warnings=tuple(entry.warnings.get(key, ())),
        )
        for i, key in enumerate(entry.keys)
    ]


@dataclass(frozen=True)
class Subset:
    """The samples to keep: of these patients, with these keys, satisfying ``where`` (``None``: any)."""

    patients: tuple[int, ...] | None = None
    keys: tuple[str, ...] | None = None
    where: Predicate | None = None

    @classmethod
    def of(
        cls,
        patients: int | Iterable[int] | None = None,
        keys: str | Iterable[str] | None = None,
        where: Predicate | None = None,
    ) -> "Subset":
        """The options as a user gives them (an int or ints, a key or keys, a callable), checked."""
        return cls(_ints("patients", patients), _strings("keys", keys), _callable(where))

    @property
    def everything(self) -> bool:
        return self.patients is None and self.keys is None and self.where is None

    def positions(self, entry: SplitEntry, split: str, where: str) -> np.ndarray:
        """Indices (manifest order) of the split's samples that the subset keeps; ``where`` names
        the split in messages (e.g. ``data/shards (train)``)."""
        n = len(entry.keys)
        if self.everything:
            return np.arange(n, dtype=np.int64)
        keep = np.ones(n, dtype=bool)
        if self.patients is not None:
            patient = np.asarray(entry.patient, dtype=np.int64)
            missing = sorted(set(self.patients) - set(patient.tolist()))
            if missing:
                have = sorted(set(patient.tolist()))
                raise NotFoundError(f"{where}: no patient(s) {_few(missing)} (has {_few(have)})")
            keep &= np.isin(patient, list(self.patients))
        if self.keys is not None:
            known = set(entry.keys)
            missing = [k for k in dict.fromkeys(self.keys) if k not in known]
            if missing:
                raise NotFoundError(f"{where}: no sample(s) {_few(missing)}")
            keep &= np.isin(np.asarray(entry.keys, dtype=object), list(self.keys))
        if self.where is not None:
            keep &= np.array([bool(self.where(r)) for r in sample_records(entry, split)], dtype=bool)
        chosen = np.flatnonzero(keep).astype(np.int64)
        if not len(chosen):
            raise UsageError(f"{where}: the subset ({self}) keeps no sample")
        return chosen

    def __str__(self) -> str:
        given = {"patients": self.patients, "keys": self.keys, "where": self.where}
        return ", ".join(
            f"{name}={_few(list(value)) if isinstance(value, tuple) else getattr(value, '__name__', value)}"
            for name, value in given.items()
            if value is not None
        )


def _ints(name: str, values: int | Iterable[int] | None) -> tuple[int, ...] | None:
    if values is None:
        return None
    if isinstance(values, (int, np.integer)) and not isinstance(values, bool):
        return (int(values),)
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise UsageError(f"{name}= takes an int or ints, got {values!r}")
    chosen = tuple(values)
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in chosen):
        raise UsageError(f"{name}= takes an int or ints, got {values!r}")
    return tuple(sorted({int(v) for v in chosen}))


def _strings(name: str, values: str | Iterable[str] | None) -> tuple[str, ...] | None:
    if values is None:
        return None
    if isinstance(values, str):
        return (values,)
    chosen = tuple(values) if isinstance(values, Iterable) else (values,)
    if not all(isinstance(v, str) for v in chosen):
        raise UsageError(f"{name}= takes a key or keys (strings), got {values!r}")
    return tuple(dict.fromkeys(chosen))


def _callable(where: Predicate | None) -> Predicate | None:
    if where is not None and not callable(where):
        raise UsageError(f"where= takes a function of a pipeline.SampleRecord, got {where!r}")
    return where


def _few(values: list) -> str:
    """At most eight of ``values``, for a message of one line."""
    shown = ", ".join(repr(v) for v in values[:8])
    return f"[{shown}{', ...' if len(values) > 8 else ''}]"
