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
import pickletools
import re
import struct
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np
import torch
from zlib_ng import zlib_ng

from pipeline.errors import SourceError
from pipeline.schema import STORABLE_KINDS, sample_key

log = logging.getLogger(__name__)

#: A sample is ~30 MB decoded at most (float32 masks); anything far larger is not a sample.
MAX_MEMBER_BYTES = 1 << 30

#: A zip local file header (signature ... file name length, extra field length), as in zipfile.
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
_ZIP64_EXTRA_ID = 0x0001  # the extra field holding 64-bit sizes when a 32-bit field reads 0xFFFFFFFF
_MASK_ENCRYPTED = 0x0001
_MASK_DATA_DESCRIPTOR = 0x0008  # CRC and sizes follow the data; the local header holds zeros
_MASK_UTF8_NAME = 0x0800
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format is a zip archive
_PICKLE_MAGIC = b"\x80"  # protocol 2+ pickle: torch's legacy format
#: torch's legacy format is pickles back to back (magic number, protocol, sys info, the object,
#: its storage keys), then raw storage bytes that are no pickle at all.
_LEGACY_PICKLES = 5
#: Reasons are one line; torch's messages run to paragraphs.
_MAX_DETAIL = 300
#: Split names become file and group names: plain lower-case words only.
SPLIT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_MEMBER_RE = re.compile(r"(?:^|/)(?P<root>[^/]+)/p(?P<patient>\d+)/aug(?P<aug>\d+)\.pt$")

_NUMPY_DTYPE_CLASSES = [
    getattr(np.dtypes, name)
    for name in (
        "BoolDType",
        "Int8DType",
        "Int16DType",
        "Int32DType",
        "Int64DType",
        "UInt8DType",
        "UInt16DType",
        "UInt32DType",
        "UInt64DType",
        "Float16DType",
        "Float32DType",
        "Float64DType",
        "ByteDType",
        "UByteDType",
        "ShortDType",
        "UShortDType",
        "IntDType",
        "UIntDType",
        "LongDType",
        "ULongDType",
        "LongLongDType",
        "ULongLongDType",
    )
    if hasattr(np.dtypes, name)
]


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


def _member_names(source: str) -> list[str]:
    if os.path.isdir(source):
        base = Path(source)
        return sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())
    with open_zip(source) as archive:
        return [info.filename for info in archive.infolist() if not info.is_dir()]


def open_zip(source: str) -> zipfile.ZipFile:
    """Open a zip, turning whatever a damaged directory makes zipfile raise into a :class:`SourceError`.

    zipfile raises more than ``BadZipFile`` for a damaged central directory: ``NotImplementedError``
    for a "version needed" it does not know, ``UnicodeDecodeError`` for a name flagged UTF-8 that is
    not, ``ValueError``, ``struct.error``... A damaged release must end in one line naming it, not a traceback.
    """
    try:
        return zipfile.ZipFile(source)
    except MemoryError:
        raise
    except Exception as exc:
        raise SourceError(source, None, f"not a readable zip archive or directory ({_describe(exc)})") from exc


def list_members(
    source: str | os.PathLike, split: str | None = None, on_bad: Callable[[SourceError], None] | None = None
) -> list[SourceMember]:
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
        with open_zip(source) as archive:
            for info in sorted(archive.infolist(), key=lambda i: i.filename):
                digest.update(f"{info.filename}\0{info.CRC:08x}\0{info.file_size}\n".encode())
    return {
        "name": os.path.basename(os.path.normpath(source)),
        "path": os.path.abspath(source),
        "bytes": size,
        "fingerprint": digest.hexdigest(),
    }


class SourceReader:
    """Reads members of one source, keeping the zip open across the members of a task."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._zip = None if os.path.isdir(source) else open_zip(source)
        try:
            self._file = None if self._zip is None else open(source, "rb")
        except OSError as exc:
            self._zip.close()
            raise SourceError(source, None, f"cannot be opened ({_describe(exc)})") from exc

    def __enter__(self) -> "SourceReader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        for handle in (self._zip, self._file):
            if handle is not None:
                handle.close()

    def read_bytes(self, member: str) -> bytes:
        """The bytes of one member, refusing anything larger than a sample can be.

        Every failure is a :class:`SourceError` naming archive and member: under ``--skip-bad`` only
        those are rejected and the rest converted, and anything else would surface as a traceback.
        """
        try:
            if self._zip is None:
                with open(os.path.join(self.source, member), "rb") as file:
                    return _read_bounded(file, self.source, member)
            try:
                info = self._zip.getinfo(member)
            except KeyError:
                raise SourceError(self.source, member, "is not in the archive's central directory") from None
            if info.file_size > MAX_MEMBER_BYTES:
                raise SourceError(self.source, member, f"declares {info.file_size} bytes, far more than a sample")
            if (
                info.compress_type in (zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED)
                and not info.flag_bits & _MASK_ENCRYPTED
            ):
                return self._read_member_fast(info)
            with self._zip.open(info) as file:  # bzip2, lzma, encrypted: zipfile knows best
                return _read_bounded(file, self.source, member)
        except (SourceError, MemoryError):
            raise
        except Exception as exc:  # zipfile, bz2, lzma, OSError...: whatever a damaged member makes them raise
            raise SourceError(self.source, member, f"cannot be read ({_describe(exc)})") from exc

    def _read_member_fast(self, info: zipfile.ZipInfo) -> bytes:
        """Read a stored or deflated member with zlib-ng (twice zlib's inflate speed), checking it all.

        zipfile's own reader inflates with the standard zlib, which is a third of a sample's
        conversion time. What zipfile checks, this checks too (the local header's signature and
        file name), and more: the local header must agree with the central directory (method,
        CRC-32 and sizes, 64-bit ones included), the deflate stream must end and give exactly
        the declared size, and the CRC-32 must match. The data's place comes from the local
        header's own name and extra lengths, which differ from the directory's for zip64 members.
        """
        name = info.filename
        self._file.seek(info.header_offset)
        header = self._file.read(_LOCAL_HEADER.size)
        if len(header) != _LOCAL_HEADER.size or header[:4] != _ZIP_MAGIC:
            raise SourceError(self.source, name, "bad local file header (truncated or corrupt zip)")
        fields = _LOCAL_HEADER.unpack(header)
        flags, method, crc, compress_size, file_size, name_length, extra_length = fields[3:5] + fields[7:]
        local_name = self._file.read(name_length)
        extra = self._file.read(extra_length)
        if len(local_name) != name_length or len(extra) != extra_length:
            raise SourceError(self.source, name, "bad local file header (the zip ends inside it)")
        disagreement = _local_header_disagreement(info, flags, method, crc, compress_size, file_size, local_name, extra)
        if disagreement:
            raise SourceError(self.source, name, f"local header disagrees with the central directory ({disagreement})")
        raw = self._file.read(info.compress_size)
        if len(raw) != info.compress_size:
            raise SourceError(self.source, name, "is truncated (the zip ends inside it)")
        if info.compress_type == zipfile.ZIP_STORED:
            if info.compress_size != info.file_size:
                reason = f"is stored, yet its size {info.file_size} differs from its stored size {info.compress_size}"
                raise SourceError(self.source, name, reason)
            data = raw
        else:
            data = self._inflate(info, raw)
        if zlib_ng.crc32(data) != info.CRC:
            raise SourceError(self.source, name, "CRC-32 mismatch: the member is corrupt")
        return data

    def _inflate(self, info: zipfile.ZipInfo, raw: bytes) -> bytes:
        """Inflate ``raw`` to exactly ``info.file_size`` bytes, or say plainly why not.

        zlib-ng raises its own ``zlib_ng.error`` (no subclass of ``zlib.error``) for an invalid stream.
        """
        inflater = zlib_ng.decompressobj(-15)
        try:
            data = inflater.decompress(raw, info.file_size + 1)
        except zlib_ng.error as exc:
            reason = f"its compressed data is not a valid deflate stream ({_plain(exc) or 'zlib-ng refused it'})"
            raise SourceError(self.source, info.filename, reason) from exc
        if len(data) > info.file_size:
            raise SourceError(
                self.source, info.filename, f"inflates to more than the {info.file_size} bytes it declares"
            )
        if not inflater.eof and len(data) < info.file_size:
            reason = (
                f"its deflate stream is cut short: the compressed data ends after {len(data)} of the "
                f"{info.file_size} bytes it declares"
            )
            raise SourceError(self.source, info.filename, reason)
        if not inflater.eof:
            reason = f"its deflate stream does not end after the {info.file_size} bytes it declares (corrupt)"
            raise SourceError(self.source, info.filename, reason)
        if len(data) < info.file_size:
            reason = f"inflates to only {len(data)} of the {info.file_size} bytes it declares (its stream ends early)"
            raise SourceError(self.source, info.filename, reason)
        return data

    def read_sample(self, member: str) -> dict[str, np.ndarray]:
        return decode_sample(self.read_bytes(member), self.source, member)


def _local_header_disagreement(
    info: zipfile.ZipInfo,
    flags: int,
    method: int,
    crc: int,
    compress_size: int,
    file_size: int,
    local_name: bytes,
    extra: bytes,
) -> str | None:
    """What a member's local header says differently from its central directory entry, or None.

    The fast reader takes sizes from the directory and the data's offset from the local header;
    if the two disagree, one of them is damaged and the member cannot be trusted. A local header
    that defers CRC and sizes to a data descriptor (flag bit 3) holds zeros there, and a zip64 one
    holds 0xFFFFFFFF with the real sizes in its zip64 extra field (both sizes, in that order).
    """
    decoded = local_name.decode("utf-8" if flags & _MASK_UTF8_NAME else "cp437", errors="replace")
    if decoded != info.orig_filename:
        return f"file name '{_printable(decoded)}'"
    if method != info.compress_type:
        return f"compression method {method}, the directory says {info.compress_type}"
    if (flags ^ info.flag_bits) & _MASK_ENCRYPTED:
        return "encryption flag"
    if flags & _MASK_DATA_DESCRIPTOR:
        return None
    if crc != info.CRC:
        return f"CRC-32 {crc:08x}, the directory says {info.CRC:08x}"
    if 0xFFFFFFFF in (file_size, compress_size):
        sizes = _zip64_local_sizes(extra, file_size, compress_size)
        if sizes is None:
            return "its sizes read 0xFFFFFFFF but it has no complete zip64 extra field"
        file_size, compress_size = sizes
    if compress_size != info.compress_size:
        return f"compressed size {compress_size}, the directory says {info.compress_size}"
    if file_size != info.file_size:
        return f"size {file_size}, the directory says {info.file_size}"
    return None


def _zip64_local_sizes(extra: bytes, file_size: int, compress_size: int) -> tuple[int, int] | None:
    """(size, compressed size) from a local header's zip64 extra field, or None if it has none.

    APPNOTE 4.5.3: a local header's zip64 record holds both sizes; tolerate one that holds only
    the fields whose 32-bit value overflowed, in the order size, compressed size.
    """
    while len(extra) >= 4:
        kind, length = struct.unpack_from("<HH", extra)
        body = extra[4 : 4 + length]
        if kind == _ZIP64_EXTRA_ID:
            if len(body) >= 16:
                return struct.unpack_from("<QQ", body)
            wanted = [value == 0xFFFFFFFF for value in (file_size, compress_size)]
            if len(body) < 8 * sum(wanted):
                return None
            values = iter(struct.unpack_from(f"<{sum(wanted)}Q", body))
            return tuple(next(values) if wide else value for wide, value in zip(wanted, (file_size, compress_size)))
        extra = extra[4 + length :]
    return None


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
    """Safely unpickle one ``.pt`` file into ``{field: numpy array}`` in the source dtypes.

    Both of torch's formats load: the zip format (torch >= 1.6) and the legacy one (pickles back
    to back), always through torch's weights-only unpickler with our numpy allow-list.
    """
    if not data:
        raise SourceError(archive, member, "is empty")
    if not data.startswith((_ZIP_MAGIC, _PICKLE_MAGIC)):
        raise SourceError(archive, member, "is not a torch file (neither torch's zip format nor a legacy pickle)")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise SourceError(archive, member, _refusal_reason(data, exc)) from exc
    except MemoryError:
        raise
    except Exception as exc:  # torch raises RuntimeError, EOFError, struct.error, ... for damaged files
        raise SourceError(archive, member, f"is not a readable torch file ({_describe(exc)})") from exc
    if not isinstance(obj, Mapping):
        raise SourceError(archive, member, f"holds a {type(obj).__name__}, not a dict of arrays")
    return {str(field): to_numpy(value, archive, member, str(field)) for field, value in obj.items()}


def _refusal_reason(data: bytes, exc: Exception) -> str:
    """Why the safe unpickler refused ``data``: the globals it asks for beyond the allow-list, if any.

    The globals are found by reading the pickle's opcodes, never by running it. torch's own
    message is passed on only as :func:`_plain` leaves it: torch advises retrying with full
    unpickling, which for a downloaded file is exactly what must never be done.
    """
    unsafe = sorted(pickle_globals(data) - _allowed_global_names())
    if unsafe:
        shown = ", ".join(_printable(name) for name in unsafe[:10]) + (", ..." if len(unsafe) > 10 else "")
        return (
            f"refused: the pickle asks for globals outside the allow-list [{shown}]; "
            "loading it could run code, so it was not loaded"
        )
    return f"refused by the safe unpickler: {_plain(exc) or type(exc).__name__}"


@lru_cache(maxsize=1)
def _allowed_global_names() -> frozenset[str]:
    """``module.name`` of every global the weights-only unpickler accepts with our allow-list."""
    from torch import _weights_only_unpickler as unpickler  # no public API lists torch's defaults

    with torch.serialization.safe_globals(SAFE_GLOBALS):
        names = set(getattr(unpickler, "_get_user_allowed_globals", dict)())
    return frozenset(names | set(getattr(unpickler, "_get_allowed_globals", dict)()))


def pickle_globals(data: bytes) -> set[str]:
    """``module.name`` of every global the pickle(s) of a torch file name, found without unpickling.

    For the zip format that is ``data.pkl``; the legacy format is several pickles back to back
    (magic number, protocol, sys info, the object, its storage keys), all of which name globals
    only through opcodes. Damage stops the scan: what was found before it is returned.
    """
    if data.startswith(_ZIP_MAGIC):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                record = next(n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl"))
                stream, count = io.BytesIO(archive.read(record)), 1
        except Exception:  # a damaged torch zip: nothing to scan
            return set()
    else:
        stream, count = io.BytesIO(data), _LEGACY_PICKLES
    found: set[str] = set()
    for _ in range(count):
        if stream.tell() >= len(stream.getbuffer()) or not _scan_pickle(stream, found):
            break
    return found


_STRING_OPCODES = frozenset(
    {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
)
_MARK = object()


def _scan_pickle(stream: io.BytesIO, found: set[str]) -> bool:
    """Add the globals one pickle in ``stream`` names to ``found``; True if it read to its STOP.

    ``GLOBAL`` and ``INST`` carry the name in their argument; ``STACK_GLOBAL`` (protocol 4+)
    takes it from the two strings on top of the stack, which may come from the memo, so the
    scan keeps a shadow stack and memo of string values, moved as each opcode documents.
    """
    stack: list = []
    memo: dict[int, object] = {}
    try:
        for opcode, arg, _ in pickletools.genops(stream):
            name = opcode.name
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                found.add(f"{module}.{attr}")
            elif name == "STACK_GLOBAL":
                attr = stack.pop() if stack else None
                module = stack.pop() if stack else None
                named = isinstance(module, str) and isinstance(attr, str)
                found.add(f"{module}.{attr}" if named else "<a global named by computed strings>")
                stack.append(None)
                continue
            elif name in ("EXT1", "EXT2", "EXT4"):
                found.add(f"<copyreg extension {arg}>")
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1] if stack else None
                continue
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1] if stack else None
                continue
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(arg))
                continue
            elif name == "MARK":
                stack.append(_MARK)
                continue
            for item in reversed(opcode.stack_before):
                if item is pickletools.stackslice:
                    while stack and stack[-1] is not _MARK:
                        stack.pop()
                elif stack:
                    stack.pop()
            pushed = arg if name in _STRING_OPCODES and isinstance(arg, str) else None
            stack.extend([pushed] * len(opcode.stack_after))
            if name == "STOP":
                return True
    except Exception:  # damaged or truncated: stop here
        return False
    return False


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: Sentences of torch's messages that advise loosening the unpickler or point at docs: never ours.
_ADVICE = re.compile(
    r"weights.only|trust|allowlist|safe_globals|file an issue|documentation|two options", re.IGNORECASE
)


def _plain(error: BaseException | str) -> str:
    """One plain line (maybe empty) from an exception's text, without torch's advice to load unsafely.

    torch wraps unpickling errors in paragraphs that recommend re-running ``torch.load`` with
    ``weights_only`` off, or allow-listing whatever global a file names. Passing that on to a
    user converting files from the internet would be dangerous advice, so every sentence that
    mentions it is dropped; what is left is the specific cause (``Unsupported operand 149``).
    """
    text = _ANSI.sub("", str(error))
    text = text.replace(getattr(torch.serialization, "UNSAFE_MESSAGE", "\0"), " ")
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    sentences = re.split(r"(?<=[.!?])\s+|\n+|\t+", text)
    kept = [s.strip() for s in sentences if s.strip() and not _ADVICE.search(s)]
    line = " ".join(" ".join(kept).split())
    if len(line) > _MAX_DETAIL:
        line = line[: _MAX_DETAIL - 3] + "..."
    return line


def _describe(error: BaseException) -> str:
    """``Type: plain detail`` of an exception, for reasons that pass on what a library said."""
    detail = _plain(error)
    return f"{type(error).__name__}: {detail}" if detail else type(error).__name__


def _printable(name: str) -> str:
    """A name as a file gives it, made safe for a one-line message (it is attacker-chosen)."""
    return re.sub(r"[^\w.<>/ -]", "?", name)[:100]


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
