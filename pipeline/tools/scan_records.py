"""What ``ssmspine scan`` finds in a source, as frozen records; ``to_json`` turns each into plain data.

Kept apart from the scanning (:mod:`pipeline.tools.scan`) and from the text
(:mod:`pipeline.tools.scan_text`), so that ``--json`` and the text say the same thing. No record
holds a password or anything derived from one: what a password did is one of the :class:`Unlock` states.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from pipeline.schema import FieldSpec

#: Entries named in a list of problems; the rest are only counted (a damaged release may have thousands).
NAMED_AT_MOST = 5

#: The states of :class:`Unlock`.
NOT_ENCRYPTED, NO_PASSWORD, OPENS, REFUSED = "not encrypted", "no password", "opens", "refused"


@dataclass(frozen=True)
class Problem:
    """One entry of a source and why it is skipped, refused or suspicious."""

    member: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"member": self.member, "reason": self.reason}


@dataclass(frozen=True)
class Problems:
    """How many entries have a problem, and the first :data:`NAMED_AT_MOST` of them."""

    count: int = 0
    first: tuple[Problem, ...] = ()

    @classmethod
    def of(cls, problems: Sequence[Problem]) -> "Problems":
        return cls(count=len(problems), first=tuple(problems[:NAMED_AT_MOST]))

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "first": [p.to_json() for p in self.first]}


@dataclass(frozen=True)
class Patient:
    """The shapes (``aug`` numbers) one patient texture has in a split."""

    patient: int
    augs: tuple[int, ...]  # sorted, each once

    @property
    def missing(self) -> tuple[int, ...]:
        """The numbers from 1 to the largest one that are not there: a shape lost on the way."""
        present = set(self.augs)
        return tuple(n for n in range(1, max(self.augs, default=0) + 1) if n not in present)

    def to_json(self) -> dict[str, Any]:
        return {
            "patient": self.patient,
            "shapes": len(self.augs),
            "augs": list(self.augs),
            "missing": list(self.missing),
        }


@dataclass(frozen=True)
class Split:
    """The samples of one split in a source, by patient."""

    name: str
    patients: tuple[Patient, ...]

    @property
    def samples(self) -> int:
        return sum(len(p.augs) for p in self.patients)

    def to_json(self) -> dict[str, Any]:
        return {"samples": self.samples, "patients": [p.to_json() for p in self.patients]}


@dataclass(frozen=True)
class Encryption:
    """File entries by encryption: none, ZipCrypto, WinZip AES, PKWARE strong encryption (unreadable)."""

    none: int = 0
    zipcrypto: int = 0
    aes: int = 0
    strong: int = 0

    @property
    def encrypted(self) -> int:
        return self.zipcrypto + self.aes + self.strong

    def to_json(self) -> dict[str, int]:
        return {"none": self.none, "zipcrypto": self.zipcrypto, "aes": self.aes, "strong": self.strong}


@dataclass(frozen=True)
class Zip64:
    """Whether an archive uses zip64: end records (the zip64 locator before the end record) or
    entries with a zip64 extra field (sizes or offsets past 4 GB)."""

    end_records: bool = False
    entries: int = 0

    @property
    def used(self) -> bool:
        return self.end_records or self.entries > 0

    def to_json(self) -> dict[str, Any]:
        return {"used": self.used, "end_records": self.end_records, "entries": self.entries}


@dataclass(frozen=True)
class ZipDirectory:
    """What a zip's central directory says, over all its file entries; ``damaged``: sample entries
    the directory alone shows cannot be read (a method no reader has, sizes no sample has...)."""

    entries: int
    methods: Mapping[str, int]
    encryption: Encryption
    zip64: Zip64
    damaged: Problems

    def to_json(self) -> dict[str, Any]:
        return {
            "entries": self.entries,
            "methods": dict(self.methods),
            "encryption": self.encryption.to_json(),
            "zip64": self.zip64.to_json(),
            "damaged": self.damaged.to_json(),
        }


@dataclass(frozen=True)
class Unlock:
    """What the password of an encrypted archive does: ``state`` is one of :data:`NOT_ENCRYPTED`,
    :data:`NO_PASSWORD`, :data:`OPENS`, :data:`REFUSED`; ``member``: the one it was tried on."""

    state: str
    member: str | None = None
    reason: str | None = None  # why it does not open, when refused

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "member": self.member, "reason": self.reason}


@dataclass(frozen=True)
class Sample:
    """The fields of the one sample read, or why none was (``problem``: also a sample read whose keys
    are not the dataset's)."""

    member: str | None
    fields: Mapping[str, FieldSpec] = field(default_factory=dict)
    problem: str | None = None

    def to_json(self) -> dict[str, Any]:
        fields = {name: spec.to_json() for name, spec in self.fields.items()}
        return {"member": self.member, "fields": fields, "problem": self.problem}


@dataclass(frozen=True)
class SourceScan:
    """One source, scanned; ``error`` says why it could not be, and then little else is known."""

    source: str  # as given, a URL without its secrets
    kind: str  # "zip" or "directory" ("" when it could not be opened)
    size: int | None = None  # bytes: of the zip, or of the files under the directory
    error: str | None = None
    splits: tuple[Split, ...] = ()
    junk: Problems = Problems()
    outside: Problems = Problems()
    duplicates: Problems = Problems()
    directory: ZipDirectory | None = None  # None for an extracted directory
    unlock: Unlock | None = None
    sample: Sample | None = None

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.splits)

    @property
    def failures(self) -> tuple[str, ...]:
        """Why this source is not OK (see :mod:`pipeline.tools.scan`); empty when it is."""
        if self.error is not None:
            return (self.error,)
        found = [] if self.samples else ["holds no <root>/p<patient>/aug<shape>.pt samples"]
        if self.unlock is not None and self.unlock.state == REFUSED:
            found.append("the password given does not open it")
        return tuple(found)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "bytes": self.size,
            "ok": self.ok,
            "failures": list(self.failures),
            "samples": self.samples,
            "splits": {s.name: s.to_json() for s in self.splits},
            "junk": self.junk.to_json(),
            "outside_layout": self.outside.to_json(),
            "duplicates": self.duplicates.to_json(),
            "zip": None if self.directory is None else self.directory.to_json(),
            "password": None if self.unlock is None else self.unlock.to_json(),
            "sample": None if self.sample is None else self.sample.to_json(),
        }


@dataclass(frozen=True)
class ScanReport:
    """Every source scanned, in the order given; OK when every one of them is."""

    sources: tuple[SourceScan, ...]

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.sources)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "sources": [s.to_json() for s in self.sources]}
