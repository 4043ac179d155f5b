"""The plain-text view of a :class:`~pipeline.tools.scan_records.ScanReport`, as ``ssmspine scan`` prints it.

A few lines per source, the most telling first: whether it is OK, its samples, then how its
entries are stored and what a password does, then what is wrong with some of them, and last one
sample's fields. Member names come from the archive (anyone may have chosen them), so they are
printed through :func:`~pipeline.source.messages.printable`.
"""

from __future__ import annotations

from typing import Sequence

from pipeline.schema import FIELD_SHAPES
from pipeline.sizes import human_bytes
from pipeline.source.messages import printable
from pipeline.source.passwords import PASSWORD_VARIABLE
from pipeline.tools.scan_records import (
    NO_PASSWORD,
    NOT_ENCRYPTED,
    OPENS,
    Encryption,
    Problems,
    Sample,
    ScanReport,
    SourceScan,
    Split,
    Unlock,
    ZipDirectory,
)
from pipeline.tools.tables import plain_table, plural

#: What a scan says of an encrypted archive scanned without its password.
NEEDS_PASSWORD = f"encrypted; give a password to check it (--password-file FILE or ${PASSWORD_VARIABLE})"


def format_scan(report: ScanReport) -> str:
    """The text of a whole scan: each source, then one line for all of them."""
    blocks = ["\n".join(source_lines(s)) for s in report.sources]
    bad = sum(not s.ok for s in report.sources)
    total = len(report.sources)
    verdict = f"OK ({plural(total, 'source')})" if not bad else f"{bad} of {plural(total, 'source')} NOT OK"
    return "\n\n".join([*blocks, f"scan: {verdict}"])


def source_lines(found: SourceScan) -> list[str]:
    """The lines of one source: a heading with its verdict, then indented facts."""
    if found.error is not None:
        return [f"{found.source}: NOT OK: cannot be scanned: {found.error}"]
    what = "extracted directory" if found.kind == "directory" else found.kind
    verdict = "OK" if found.ok else "NOT OK: " + "; ".join(found.failures)
    lines = [f"{found.source} ({what}, {human_bytes(found.size or 0)}): {verdict}"]
    lines.append(f"  samples: {found.samples} in {plural(len(found.splits), 'split')}")
    for split in found.splits:
        lines += split_lines(split)
    if found.directory is not None:
        lines += directory_lines(found.directory)
    if found.unlock is not None:
        lines.append(f"  password: {unlock_text(found.unlock)}")
    lines += problem_lines("junk (skipped)", found.junk)
    lines += problem_lines("outside the layout", found.outside)
    lines += problem_lines("keys given twice", found.duplicates)
    if found.directory is not None:
        lines += problem_lines("damaged directory entries", found.directory.damaged, always=True)
    if found.sample is not None:
        lines += sample_lines(found.sample)
    return lines


def split_lines(split: Split) -> list[str]:
    """A split's patients, those with the same shapes on one line: ``p1-p12: 32 shapes each (aug1-aug32)``."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for patient in split.patients:
        groups.setdefault(patient.augs, []).append(patient.patient)
    lines = [f"  {split.name}: {plural(split.samples, 'sample')}, {plural(len(split.patients), 'patient')}"]
    for augs, patients in groups.items():
        each = " each" if len(patients) > 1 else ""
        missing = [n for n in range(1, max(augs) + 1) if n not in set(augs)]
        gap = f"; missing {spans('aug', missing)}" if missing else ""
        lines.append(f"    {spans('p', patients)}: {plural(len(augs), 'shape')}{each} ({spans('aug', augs)}{gap})")
    return lines


def spans(prefix: str, numbers: Sequence[int]) -> str:
    """``[1, 2, 3, 5]`` → ``"aug1-aug3, aug5"``: runs of consecutive numbers as ranges."""
    runs: list[list[int]] = []
    for n in sorted(numbers):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(f"{prefix}{a}" if a == b else f"{prefix}{a}-{prefix}{b}" for a, b in runs)


def directory_lines(directory: ZipDirectory) -> list[str]:
    methods = ", ".join(f"{name} {count}" for name, count in directory.methods.items()) or "no entries"
    zip64 = directory.zip64
    if zip64.used:
        parts = ["zip64 end records"] * zip64.end_records + [plural(zip64.entries, "entry") + " with zip64 sizes"]
        zip64_text = "yes (" + ", ".join(parts) + ")"
    else:
        zip64_text = "no"
    return [
        f"  entries: {directory.entries}; compression: {methods}",
        f"  encryption: {encryption_text(directory.encryption)}",
        f"  zip64: {zip64_text}",
    ]


def encryption_text(encryption: Encryption) -> str:
    if not encryption.encrypted:
        return "none"
    kinds = [("AES", encryption.aes), ("ZipCrypto", encryption.zipcrypto), ("PKWARE strong", encryption.strong)]
    kinds.append(("unencrypted", encryption.none))
    return ", ".join(f"{name} {count}" for name, count in kinds if count)


def unlock_text(unlock: Unlock) -> str:
    if unlock.state == NOT_ENCRYPTED:
        return "none needed (not encrypted)"
    if unlock.state == NO_PASSWORD:
        return NEEDS_PASSWORD
    where = printable(unlock.member or "")
    if unlock.state == OPENS:
        return f"the password given opens it (checked on {where})"
    return f"the password given does NOT open it (tried on {where}: {unlock.reason})"


def problem_lines(title: str, problems: Problems, always: bool = False) -> list[str]:
    """``title: N`` and the first few entries with their reasons; nothing when there are none,
    unless ``always`` (a reader looks for "damaged: 0")."""
    if not problems.count:
        return [f"  {title}: none"] if always else []
    lines = [f"  {title}: {problems.count}"]
    lines += [f"    {printable(p.member)}: {p.reason}" for p in problems.first]
    if problems.count > len(problems.first):
        lines.append(f"    ... and {problems.count - len(problems.first)} more")
    return lines


def sample_lines(sample: Sample) -> list[str]:
    """The fields of the sample read, a README shape that differs noted; or why none was read."""
    if sample.member is None:
        return [f"  sample: none read ({sample.problem})"]
    lines = [f"  sample {printable(sample.member)}:"]
    if sample.problem:
        lines.append(f"    {sample.problem}")
    rows = []
    for name, spec in sample.fields.items():
        readme = FIELD_SHAPES.get(name)
        note = "" if readme is None or readme == spec.shape else "README: " + "×".join(map(str, readme))
        rows.append([name, "×".join(map(str, spec.shape)) or "scalar", spec.dtype, note])
    return lines + plain_table(["field", "shape", "dtype", ""], rows, indent="    ")
