"""Finding the samples of a source: the members of a release zip (or of its extracted tree), by split.

A source is a release zip (``SSMSpine_Train.zip``), local or at a URL (``s3://bucket/...``, read
in place by :mod:`pipeline.source.remote`), or a local directory holding the same tree after
extraction. A source at a URL is opened with the run's ``storage_options``, those of its URL only
(:func:`~pipeline.io.filesystems.options_for`). Members are ``<root>/p<patient>/aug<shape>.pt``;
the root may sit under other folders (``SSMSpine_Train/Train/p1/aug1.pt``) and names the split
(``Train`` → ``train``). Listing reads the zip's central directory only.
"""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from pipeline.errors import SourceError
from pipeline.schema import sample_key
from pipeline.source.messages import describe
from pipeline.source.remote import RangedFile, RemoteArchive
from pipeline.source.zip_crypto import AES_METHOD
from pipeline.urls import is_url, location_name, safe_url

#: Split names become file and group names: plain lower-case words only.
SPLIT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_MEMBER_RE = re.compile(r"(?:^|/)(?P<root>[^/]+)/p(?P<patient>\d+)/aug(?P<aug>\d+)\.pt$")


@dataclass(frozen=True, order=True)
class SourceMember:
    """One sample file inside a source, with the numbers parsed from its name."""

    split: str
    patient: int
    aug: int
    archive: str  # path or URL of the zip file, or path of the extracted directory
    member: str  # name inside the zip, or path relative to the directory ("/"-separated)
    root: str  # the folder naming the split in the release ("Train", "Test")

    @property
    def key(self) -> str:
        return sample_key(self.patient, self.aug)

    @property
    def location(self) -> tuple[str, str]:
        return self.archive, self.member


def is_junk(name: str) -> bool:
    """True for entries that zips made on macOS and friends carry but that are not samples."""
    parts = name.split("/")
    return "__MACOSX" in parts or any(part.startswith("._") for part in parts) or not name.endswith(".pt")


def parse_member(archive: str, name: str, split: str | None = None) -> SourceMember:
    """Parse ``<root>/p<patient>/aug<shape>.pt``; the split is the lower-cased root unless given."""
    match = _MEMBER_RE.search(name)
    if not match:
        raise SourceError(archive, name, "a .pt file outside the SSMSpine layout <root>/p<patient>/aug<shape>.pt")
    root = match.group("root")
    split = split or root.lower()
    if not SPLIT_NAME.match(split):
        raise SourceError(archive, name, f"the root folder {root!r} gives no safe split name; name it with --split")
    return SourceMember(
        split=split,
        patient=int(match.group("patient")),
        aug=int(match.group("aug")),
        archive=archive,
        member=name,
        root=root,
    )


def _member_names(source: str, storage_options: Mapping[str, Any] | None) -> list[str]:
    if not is_url(source) and os.path.isdir(source):
        base = Path(source)
        return sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())
    with open_zip(source, storage_options=storage_options) as archive:
        return [info.filename for info in archive.infolist() if not info.is_dir()]


def open_zip(
    source: str, file: RangedFile | None = None, *, storage_options: Mapping[str, Any] | None = None
) -> zipfile.ZipFile:
    """Open a zip (through ``file`` if given, else the path or URL ``source``, a URL with
    ``storage_options``), turning whatever a damaged directory makes zipfile raise into a :class:`SourceError`.

    zipfile raises more than ``BadZipFile`` for a damaged central directory: ``NotImplementedError``
    for a "version needed" it does not know, ``UnicodeDecodeError`` for a name flagged UTF-8 that is
    not, ``ValueError``, ``struct.error``... A damaged release must end in one line naming it, not a traceback.
    """
    if file is None and is_url(source):
        file = RemoteArchive(source, storage_options).open()
    try:
        return zipfile.ZipFile(source if file is None else file)
    except MemoryError:
        raise
    except Exception as exc:
        raise SourceError(source, None, f"not a readable zip archive or directory ({describe(exc)})") from exc


def list_members(
    source: str | os.PathLike,
    split: str | None = None,
    on_bad: Callable[[SourceError], None] | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> list[SourceMember]:
    """All sample members of one source, sorted by (split, patient, aug); junk is skipped.

    A ``.pt`` name outside the layout raises, or is handed to ``on_bad`` and left out.
    """
    source = os.fspath(source)
    if not is_url(source) and not os.path.exists(source):
        raise SourceError(source, None, "no such file or directory")
    members = []
    for name in _member_names(source, storage_options):
        if is_junk(name):
            continue
        try:
            members.append(parse_member(source, name, split))
        except SourceError as error:
            if on_bad is None:
                raise
            on_bad(error)
    members.sort()
    if not members:
        raise SourceError(source, None, "holds no <root>/p<patient>/aug<shape>.pt members")
    return members


def fingerprint(source: str | os.PathLike, storage_options: Mapping[str, Any] | None = None) -> dict:
    """Name, size and a content fingerprint of a source, cheap even for a 20 GB zip.

    For a zip the fingerprint hashes the central directory entries (name, CRC-32, size) of its
    members, which change whenever any member's content does, without reading the data (WinZip AES
    members add their compressed size and offset: AE-2 stores a CRC of 0, and its authentication code
    lies in the data, which a fingerprint of the directory does not read). For a
    directory it hashes (relative path, size, mtime) of its files. A zip at a URL is fingerprinted
    as a local one (its directory comes with two ranged requests), so a resumed run sees a changed
    object whatever its store says about it, and a merely re-uploaded one is no change; its path is
    the URL without credentials.
    """
    source = os.fspath(source)
    digest = hashlib.sha256()
    if not is_url(source) and os.path.isdir(source):
        base = Path(source)
        size = 0
        for path in sorted(p for p in base.rglob("*") if p.is_file()):
            stat = path.stat()
            size += stat.st_size
            digest.update(f"{path.relative_to(base).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    else:
        with open_zip(source, storage_options=storage_options) as archive:
            size = archive.fp.size if isinstance(archive.fp, RangedFile) else os.path.getsize(source)
            for info in sorted(archive.infolist(), key=lambda i: i.filename):
                digest.update(f"{info.filename}\0{info.CRC:08x}\0{info.file_size}\n".encode())
                if info.compress_type == AES_METHOD:  # AE-2 stores CRC 0: its size and place must tell
                    digest.update(f"\0{info.compress_size}\0{info.header_offset}\n".encode())
    return {
        "name": location_name(source),
        "path": safe_url(source) if is_url(source) else os.path.abspath(source),
        "bytes": size,
        "fingerprint": digest.hexdigest(),
    }
