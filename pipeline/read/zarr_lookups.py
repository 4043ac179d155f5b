"""Finding samples of a :class:`~pipeline.read.zarr_dataset.ZarrDataset` by key, patient and virtual shape.

Answered from the keys and the small ``patient``/``aug`` arrays read when the dataset opens,
without touching any image data; the rows found are the dataset's indices. A dataset opened on a
subset (:func:`kept_samples`, :mod:`pipeline.read.subsets`) finds only the subset's samples.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from pipeline.errors import SampleKeyError
from pipeline.read.subsets import Predicate, Subset
from pipeline.store.manifest import Manifest
from pipeline.store.zarr_layout import SplitRows
from pipeline.urls import safe_url

__all__ = ["Predicate", "SampleLookups", "kept_samples"]


def kept_samples(
    samples: SplitRows,
    manifest: Manifest,
    split: str,
    root: str | Path,
    patients: int | Iterable[int] | None,
    keys: str | Iterable[str] | None,
    where: Predicate | None,
) -> tuple[tuple[str, ...], np.ndarray]:
    """The keys and Zarr rows (manifest order) of the split's samples that the subset options keep."""
    named = f"{safe_url(os.fspath(root))} ({split})"
    kept = Subset.of(patients, keys, where).positions(manifest.split(split), split, named)
    return tuple(samples.keys[i] for i in kept), samples.rows[kept]


class SampleLookups:
    """Lookups by key, patient and ``aug`` for a dataset with ``split`` and ``ds[i]`` (mixed in)."""

    split: str

    def find_samples(self, keys: Sequence[str], patients: np.ndarray, augs: np.ndarray) -> None:
        """Index the samples: ``keys`` and each one's patient and ``aug``, in the dataset's order."""
        self.patients = _read_only(patients)
        self.augs = _read_only(augs)
        self._by_key = {k: i for i, k in enumerate(keys)}
        self._by_patient_aug = {(int(p), int(a)): i for i, (p, a) in enumerate(zip(self.patients, self.augs))}

    def index_of(self, patient: int | None = None, aug: int | None = None, *, key: str | None = None) -> int:
        """Row of the sample of ``patient`` and virtual shape ``aug`` (or of ``key``); KeyError if absent."""
        if key is not None:
            if key not in self._by_key:
                raise SampleKeyError(f"split {self.split!r} has no sample {key!r}")
            return self._by_key[key]
        if patient is None or aug is None:
            raise TypeError("index_of needs patient and aug, or key")
        try:
            return self._by_patient_aug[(int(patient), int(aug))]
        except KeyError:
            raise SampleKeyError(f"split {self.split!r} has no sample of patient {patient}, aug {aug}") from None

    def indices(self, patient: int | Iterable[int] | None = None, aug: int | Iterable[int] | None = None) -> list[int]:
        """Rows matching ``patient`` and ``aug`` (each an int, several, or None for any), in order.

        Meant for ``torch.utils.data.Subset(ds, ds.indices(patient=3))``.
        """
        keep = _matches(self.patients, patient) & _matches(self.augs, aug)
        return np.flatnonzero(keep).tolist()

    def get(self, patient: int, aug: int) -> dict[str, Any]:
        """The sample of ``patient`` and virtual shape ``aug``, as ``ds[i]`` gives it."""
        return self[self.index_of(patient, aug)]


def _matches(values: np.ndarray, wanted: int | Iterable[int] | None) -> np.ndarray:
    if wanted is None:
        return np.ones(len(values), dtype=bool)
    return np.isin(values, [wanted] if isinstance(wanted, (int, np.integer)) else list(wanted))


def _read_only(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    values.flags.writeable = False
    return values
