"""Finding and safely decoding the samples of SSMSpine source archives.

A source is a release zip (``SSMSpine_Train.zip``) or a directory holding the same tree after
extraction. Members are ``<root>/p<patient>/aug<shape>.pt``; the root may sit under other folders
(``SSMSpine_Train/Train/p1/aug1.pt``) and names the split (``Train`` → ``train``).

Samples are decoded with ``torch.load(weights_only=True)`` and an allow-list of exactly the numpy
globals that numpy-valued files name. Nothing is ever unpickled without that restriction: the
archives come from the internet, and a pickle can run arbitrary code.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np
import torch
from zlib_ng import zlib_ng

from .schema import STORABLE_KINDS, SourceError, sample_key

log = logging.getLogger(__name__)

#: A sample is ~30 MB decoded at most (float32 masks); anything far larger is not a sample.
MAX_MEMBER_BYTES = 1 << 30

#: A zip local file header (signature ... file name length, extra field length), as in zipfile.
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format is a zip archive
_PICKLE_MAGIC = b"\x80"  # protocol 2+ pickle: torch's legacy format
#: Split names become file and group names: plain lower-case words only.
SPLIT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_MEMBER_RE = re.compile(r"(?:^|/)(?P<root>[^/]+)/p(?P<patient>\d+)/aug(?P<aug>\d+)\.pt$")

_NUMPY_DTYPE_CLASSES = [
    getattr(np.dtypes, name)
    for name in (
        "BoolDType", "Int8DType", "Int16DType", "Int32DType", "Int64DType",
        "UInt8DType", "UInt16DType", "UInt32DType", "UInt64DType",
        "Float16DType", "Float32DType", "Float64DType",
        "ByteDType", "UByteDType", "ShortDType", "UShortDType", "IntDType", "UIntDType",
        "LongDType", "ULongDType", "LongLongDType", "ULongLongDType",
    )
    if hasattr(np.dtypes, name)
]  # fmt: skip


def _reconstruct_function():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


#: The only globals a numpy-valued sample file may name. Files pickled under numpy 1.x name the
#: array constructor ``numpy.core.multiarray._reconstruct``, under numpy 2.x ``numpy._core...``;
#: both resolve to the same function. The dtype classes are needed to rebuild dtypes under numpy 2.
SAFE_GLOBALS: list = [
    (_reconstruct_function(), "numpy.core.multiarray._reconstruct"),
    (_reconstruct_function(), "numpy._core.multiarray._reconstruct"),
    np.ndarray,
    np.dtype,
    *_NUMPY_DTYPE_CLASSES,
]


@dataclass(frozen=True, order=True)
class SourceMember:
    """One sample file inside a source, with the numbers parsed from its name."""

    split: str
    patient: int
    aug: int
    archive: str  # path of the zip file or of the extracted directory
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
    return (
        "__MACOSX" in parts
        or any(part.startswith("._") for part in parts)
        or not name.endswith(".pt")
    )


def parse_member(archive: str, name: str, split: str | None = None) -> SourceMember:
    """Parse ``<root>/p<patient>/aug<shape>.pt``; the split is the lower-cased root unless given."""
    match = _MEMBER_RE.search(name)
    if not match:
        raise SourceError(
            archive, name, "a .pt file outside the SSMSpine layout <root>/p<patient>/aug<shape>.pt"
        )
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


def _member_names(source: str) -> list[str]:
    if os.path.isdir(source):
        base = Path(source)
        return sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())
    try:
        with zipfile.ZipFile(source) as archive:
            return [info.filename for info in archive.infolist() if not info.is_dir()]
    except (zipfile.BadZipFile, OSError) as exc:
        raise SourceError(source, None, f"not a readable zip archive or directory ({exc})") from exc


def list_members(source: str | os.PathLike, split: str | None = None,
                 on_bad: Callable[[SourceError], None] | None = None) -> list[SourceMember]:  # fmt: skip
    """All sample members of one source, sorted by (split, patient, aug); junk is skipped.

    A ``.pt`` name outside the layout raises, or is handed to ``on_bad`` and left out.
    """
    source = os.fspath(source)
    if not os.path.exists(source):
        raise SourceError(source, None, "no such file or directory")
    members = []
    for name in _member_names(source):
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


def fingerprint(source: str | os.PathLike) -> dict:
    """Name, size and a content fingerprint of a source, cheap even for a 20 GB zip.

    For a zip the fingerprint hashes the central directory entries (name, CRC-32, size) of its
    members, which change whenever any member's content does, without reading the data. For a
    directory it hashes (relative path, size, mtime) of its files.
    """
    source = os.fspath(source)
    digest = hashlib.sha256()
    if os.path.isdir(source):
        base = Path(source)
        size = 0
        for path in sorted(p for p in base.rglob("*") if p.is_file()):
            stat = path.stat()
            size += stat.st_size
            digest.update(f"{path.relative_to(base).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    else:
        size = os.path.getsize(source)
        with zipfile.ZipFile(source) as archive:
            for info in sorted(archive.infolist(), key=lambda i: i.filename):
                digest.update(f"{info.filename}\0{info.CRC:08x}\0{info.file_size}\n".encode())
    return {"name": os.path.basename(os.path.normpath(source)), "path": os.path.abspath(source),
            "bytes": size, "fingerprint": digest.hexdigest()}  # fmt: skip


class SourceReader:
    """Reads members of one source, keeping the zip open across the members of a task."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._zip = None if os.path.isdir(source) else zipfile.ZipFile(source)
        self._file = None if self._zip is None else open(source, "rb")

    def __enter__(self) -> "SourceReader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        for handle in (self._zip, self._file):
            if handle is not None:
                handle.close()

    def read_bytes(self, member: str) -> bytes:
        """The bytes of one member, refusing anything larger than a sample can be."""
        try:
            if self._zip is None:
                with open(os.path.join(self.source, member), "rb") as file:
                    return _read_bounded(file, self.source, member)
            info = self._zip.getinfo(member)
            if info.file_size > MAX_MEMBER_BYTES:
                raise SourceError(self.source, member, f"declares {info.file_size} bytes, far more than a sample")
            if info.compress_type in (zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED) and not info.flag_bits & 0x1:
                return self._read_member_fast(info)
            with self._zip.open(info) as file:  # bzip2, lzma, encrypted: zipfile knows best
                return _read_bounded(file, self.source, member)
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error, RuntimeError, NotImplementedError) as exc:
            raise SourceError(self.source, member, f"cannot be read ({exc})") from exc

    def _read_member_fast(self, info: zipfile.ZipInfo) -> bytes:
        """Read a stored or deflated member with zlib-ng (twice zlib's inflate speed), checking its CRC.

        zipfile's own reader inflates with the standard zlib, which is a third of a sample's
        conversion time; the local header is parsed exactly as zipfile does.
        """
        self._file.seek(info.header_offset)
        header = self._file.read(_LOCAL_HEADER.size)
        if len(header) != _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
            raise SourceError(self.source, info.filename, "bad local file header (truncated or corrupt zip)")
        name_length, extra_length = _LOCAL_HEADER.unpack(header)[-2:]
        self._file.seek(info.header_offset + _LOCAL_HEADER.size + name_length + extra_length)
        raw = self._file.read(info.compress_size)
        if len(raw) != info.compress_size:
            raise SourceError(self.source, info.filename, "is truncated (the zip ends inside it)")
        if info.compress_type == zipfile.ZIP_STORED:
            data = raw
        else:
            inflater = zlib_ng.decompressobj(-15)
            data = inflater.decompress(raw, info.file_size + 1)
            if len(data) > info.file_size:
                raise SourceError(self.source, info.filename, f"inflates to more than the {info.file_size} bytes it declares")
        if len(data) != info.file_size or zlib_ng.crc32(data) != info.CRC:
            raise SourceError(self.source, info.filename, "CRC-32 mismatch: the member is corrupt")
        return data

    def read_sample(self, member: str) -> dict[str, np.ndarray]:
        return decode_sample(self.read_bytes(member), self.source, member)


def _read_bounded(file, archive: str, member: str) -> bytes:
    data = file.read(MAX_MEMBER_BYTES + 1)
    if len(data) > MAX_MEMBER_BYTES:
        raise SourceError(archive, member, f"inflates to more than {MAX_MEMBER_BYTES} bytes")
    return data


class Readers:
    """One open :class:`SourceReader` per archive, for a task that reads members of several."""

    def __init__(self) -> None:
        self._readers: dict[str, SourceReader] = {}

    def __enter__(self) -> "Readers":
        return self

    def __exit__(self, *exc_info) -> None:
        for reader in self._readers.values():
            reader.close()

    def read_sample(self, archive: str, member: str) -> dict[str, np.ndarray]:
        if archive not in self._readers:
            self._readers[archive] = SourceReader(archive)
        return self._readers[archive].read_sample(member)


def read_samples(locations: Iterable[tuple[str, str]]) -> Iterator[dict[str, np.ndarray]]:
    """Decode ``(archive, member)`` locations in order; the first bad one raises."""
    with Readers() as readers:
        for archive, member in locations:
            yield readers.read_sample(archive, member)


def decode_sample(data: bytes, archive: str, member: str) -> dict[str, np.ndarray]:
    """Safely unpickle one ``.pt`` file into ``{field: numpy array}`` in the source dtypes."""
    if not data:
        raise SourceError(archive, member, "is empty")
    if not data.startswith((_ZIP_MAGIC, _PICKLE_MAGIC)):
        raise SourceError(archive, member, "is not a torch file (neither torch's zip format nor a legacy pickle)")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise SourceError(archive, member, _refusal_reason(data, exc)) from exc
    except Exception as exc:  # torch raises RuntimeError, EOFError, ... for damaged files
        raise SourceError(archive, member, f"is not a readable torch file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, Mapping):
        raise SourceError(archive, member, f"holds a {type(obj).__name__}, not a dict of arrays")
    return {str(field): to_numpy(value, archive, member, str(field)) for field, value in obj.items()}


def _refusal_reason(data: bytes, exc: Exception) -> str:
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
    except Exception:  # not a zip-format torch file: the unpickling error says enough
        unsafe = []
    if unsafe:
        return (
            f"refused: the pickle asks for globals outside the allow-list {unsafe}; "
            "loading it could run code, so it was not loaded"
        )
    detail = re.search(r"WeightsUnpickler error: (.+)", str(exc))
    return f"refused by the safe unpickler: {detail.group(1) if detail else str(exc).splitlines()[0]}"


def to_numpy(value: object, archive: str, member: str, field: str) -> np.ndarray:
    """A numpy array with the same dtype, shape and bytes as a tensor or array field value."""
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.bfloat16 or value.is_complex():
            raise SourceError(archive, member, f"field {field!r} has dtype {value.dtype}, which numpy cannot hold")
        array = value.detach().cpu().resolve_conj().resolve_neg().contiguous().numpy()
    elif isinstance(value, np.ndarray):
        array = value
    else:
        raise SourceError(archive, member, f"field {field!r} is a {type(value).__name__}, not an array")
    if array.dtype.kind not in STORABLE_KINDS:
        raise SourceError(archive, member, f"field {field!r} has dtype {array.dtype}, not a numeric or bool dtype")
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return np.ascontiguousarray(array)
