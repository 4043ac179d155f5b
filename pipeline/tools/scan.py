"""``ssmspine scan SRC...``: what sources hold, before anything is converted.

Why: the release is 25 GB behind a password, and a conversion takes hours. Whether the archives
are what the converter expects — which samples per split, patient and shape, how they are
compressed and encrypted, whether zip64, whether the password opens them, what a sample's fields
look like — should be known first, and cheaply. A scan reads a zip's central directory and at
most a few members: what :func:`~pipeline.source.unlock.try_password` decrypts to prove a
password, and up to :data:`SAMPLES_TRIED` to read one sample; never a whole archive. At a URL that
is a handful of ranged requests.

**OK or not.** A source is not OK (and ``ssmspine scan`` exits with 2) when it cannot be opened
(not there, neither a zip nor a directory, a URL that cannot be read), when it holds no sample,
or when the password given does not open it: each of these stops a conversion whatever its
options. Everything else is reported and leaves it OK: junk (which the converter skips), names
outside the layout, keys given twice and damaged entries (each stops a conversion, or is rejected
under ``--skip-bad``), a sample that could not be read, and an encrypted archive without a
password (a scan needs none; converting does, and says how to give it).

Each source is scanned on its own: one that cannot be opened is recorded as such and the others
are still scanned. Passwords and ``storage_options`` (for sources at URLs, each URL taking its
own: :func:`~pipeline.io.filesystems.options_for`) are used, never kept: no record holds one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from pipeline.errors import SchemaError, SourceError, UnavailableError
from pipeline.schema import FIELDS, FieldSpec, check_sample, spec_of
from pipeline.sizes import tree_bytes
from pipeline.source.members import SourceMember, is_junk, open_zip, parse_member
from pipeline.source.passwords import NO_PASSWORDS, Password, Passwords
from pipeline.source.unlock import encrypted_members, try_password
from pipeline.source.zip_local import MASK_ENCRYPTED
from pipeline.source.zip_reader import SourceReader
from pipeline.tools.scan_records import (
    NO_PASSWORD,
    NOT_ENCRYPTED,
    OPENS,
    REFUSED,
    Patient,
    Problem,
    Problems,
    Sample,
    ScanReport,
    SourceScan,
    Split,
    Unlock,
)
from pipeline.tools.scan_text import format_scan
from pipeline.tools.scan_zip import damage, read_directory, zip64_end_records
from pipeline.urls import is_url, safe_url

__all__ = ["SAMPLES_TRIED", "ScanReport", "SourceScan", "format_scan", "scan", "scan_source"]

#: Sample members tried, in order, until one decodes: a damaged first member is no reason to show no schema.
SAMPLES_TRIED = 3


@dataclass(frozen=True)
class Layout:
    """A source's file names sorted by what the converter does with them."""

    members: tuple[SourceMember, ...]  # the samples, sorted by (split, patient, aug)
    junk: tuple[Problem, ...]
    outside: tuple[Problem, ...]
    duplicates: tuple[Problem, ...]


def scan(
    sources: Sequence[str | os.PathLike],
    passwords: Passwords = NO_PASSWORDS,
    storage_options: Mapping[str, Any] | None = None,
) -> ScanReport:
    """Scan every source with its password from ``passwords`` (by file name, else the default)."""
    paths = [os.fspath(s) for s in sources]
    return ScanReport(tuple(scan_source(p, passwords.for_archive(p), storage_options) for p in paths))


def scan_source(
    source: str, password: Password | None = None, storage_options: Mapping[str, Any] | None = None
) -> SourceScan:
    """One source scanned; a source that cannot be read is a record saying why, not an exception,
    so that a list of sources is scanned to its end."""
    try:
        if not is_url(source) and os.path.isdir(source):
            return _scan_tree(source)
        return _scan_zip(source, password, dict(storage_options or {}))
    except SourceError as exc:
        reason = f"{exc.member}: {exc.reason}" if exc.member else exc.reason
    except UnavailableError as exc:  # a URL still failing after the retries
        reason = str(exc)
    return SourceScan(source=safe_url(source), kind="", error=reason)


def _scan_tree(source: str) -> SourceScan:
    base = Path(source)
    layout = sort_names(source, sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()))
    candidates = [m.member for m in layout.members]
    return _record(source, "directory", tree_bytes(source), layout, sample=read_one(source, None, candidates))


def _scan_zip(source: str, password: Password | None, storage_options: dict[str, Any]) -> SourceScan:
    if not is_url(source) and not os.path.exists(source):
        raise SourceError(source, None, "no such file or directory")
    with open_zip(source, storage_options=storage_options) as archive:
        infos = [info for info in archive.infolist() if not info.is_dir()]
        size, end_records = zip64_end_records(archive)
        encrypted = len(encrypted_members(archive.infolist()))
    layout = sort_names(source, [info.filename for info in infos])
    directory = read_directory(infos, {m.member for m in layout.members}, size, end_records)
    unlock = check_password(source, password, encrypted, storage_options)
    by_name = {info.filename: info for info in infos}
    opens = unlock.state == OPENS
    readable = [
        m.member
        for m in layout.members
        if not damage(by_name[m.member], size) and (opens or not by_name[m.member].flag_bits & MASK_ENCRYPTED)
    ]
    if opens and unlock.member in readable:  # known to decrypt: read it first
        readable.insert(0, readable.pop(readable.index(unlock.member)))
    sample = read_one(source, password, readable, _why_no_sample(layout, unlock), storage_options)
    return _record(source, "zip", size, layout, sample, directory=directory, unlock=unlock)


def _record(source: str, kind: str, size: int, layout: Layout, sample: Sample, **zip_facts) -> SourceScan:
    return SourceScan(
        source=safe_url(source),
        kind=kind,
        size=size,
        splits=splits_of(layout.members),
        junk=Problems.of(layout.junk),
        outside=Problems.of(layout.outside),
        duplicates=Problems.of(layout.duplicates),
        sample=sample,
        **zip_facts,
    )


def sort_names(source: str, names: Sequence[str]) -> Layout:
    """Samples, junk, names outside the layout, and keys a sample of the same source gave already
    (the converter refuses the second: it would not know which one is the sample)."""
    members: list[SourceMember] = []
    junk, outside, duplicates = [], [], []
    first: dict[tuple[str, int, int], str] = {}
    for name in names:
        if is_junk(name):
            junk.append(Problem(name, junk_reason(name)))
            continue
        try:
            member = parse_member(source, name)
        except SourceError as error:
            outside.append(Problem(name, error.reason))
            continue
        key = (member.split, member.patient, member.aug)
        if key in first:
            duplicates.append(Problem(name, f"sample {member.key} of split {member.split!r} again: {first[key]}"))
            continue
        first[key] = name
        members.append(member)
    return Layout(tuple(sorted(members)), tuple(junk), tuple(outside), tuple(duplicates))


def junk_reason(name: str) -> str:
    """Why :func:`~pipeline.source.members.is_junk` skips ``name``, in a few words."""
    parts = name.split("/")
    if "__MACOSX" in parts or any(part.startswith("._") for part in parts):
        return "macOS metadata"
    return "not a .pt file"


def splits_of(members: Sequence[SourceMember]) -> tuple[Split, ...]:
    """The samples by split and patient, each patient with its sorted shape numbers."""
    by_split: dict[str, dict[int, list[int]]] = {}
    for member in members:
        by_split.setdefault(member.split, {}).setdefault(member.patient, []).append(member.aug)
    return tuple(
        Split(name, tuple(Patient(patient, tuple(sorted(augs))) for patient, augs in sorted(patients.items())))
        for name, patients in sorted(by_split.items())
    )


def check_password(
    source: str, password: Password | None, encrypted: int, storage_options: Mapping[str, Any] | None = None
) -> Unlock:
    """Whether the password opens an archive with ``encrypted`` encrypted sample entries; proved by
    decrypting whole members, as a conversion does before it starts."""
    if not encrypted:
        return Unlock(NOT_ENCRYPTED)
    if password is None:
        return Unlock(NO_PASSWORD)
    opening = try_password(source, password, storage_options)
    return Unlock(OPENS if opening.opens else REFUSED, opening.member or None, opening.reason)


def _why_no_sample(layout: Layout, unlock: Unlock) -> str:
    if not layout.members:
        return "no sample to read"
    if unlock.state == NO_PASSWORD:
        return "encrypted; give a password to read one"
    if unlock.state == REFUSED:
        return "the password given does not open it"
    return "every sample entry is damaged"


def read_one(
    source: str,
    password: Password | None,
    candidates: Sequence[str],
    why_none: str = "",
    storage_options: Mapping[str, Any] | None = None,
) -> Sample:
    """The fields of the first of ``candidates`` (up to :data:`SAMPLES_TRIED`) that decodes.

    Not :func:`pipeline.schema.schema_from_sample`: a scan reports fields that differ from the
    dataset's (its keys, the README's shapes) rather than raising or logging, as one report.
    """
    if not candidates:
        return Sample(None, problem=why_none or "no sample to read")
    failures = []
    with SourceReader(source, password, storage_options) as reader:
        for member in candidates[:SAMPLES_TRIED]:
            try:
                sample = reader.read_sample(member)
            except SourceError as error:
                failures.append(f"{member}: {error.reason}")
                continue
            return Sample(member, fields_of(sample), keys_problem(sample, source, member))
    return Sample(None, problem=f"none of the {len(failures)} sample(s) tried could be read; {failures[0]}")


def fields_of(sample: dict[str, np.ndarray]) -> dict[str, FieldSpec]:
    """Shape and dtype per field, the dataset's fields first in their order, then any others."""
    order = [f for f in FIELDS if f in sample] + [f for f in sample if f not in FIELDS]
    return {field: spec_of(sample[field]) for field in order}


def keys_problem(sample: dict[str, np.ndarray], source: str, member: str) -> str | None:
    """Why the sample's keys are not the dataset's (which stops a conversion), or None."""
    try:
        check_sample(sample, dict.fromkeys(FIELDS), source, member, keys_only=True)
    except SchemaError as error:
        return error.reason
    return None
