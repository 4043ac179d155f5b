"""Reading members of a source, fast and checked: zip members inflated with zlib-ng, or files of a tree.

Every failure is a :class:`SourceError` naming archive, member and reason, so that ``--skip-bad``
rejects exactly the bad members and nothing surfaces as a traceback. A zip at a URL is read the
same way, through :class:`pipeline.source.remote.RangedFile`: a member costs one ranged request.
"""

from __future__ import annotations

import os
import struct
import zipfile
from typing import Iterable, Iterator

import numpy as np
from zlib_ng import zlib_ng

from pipeline.errors import SourceError, UnavailableError
from pipeline.source.members import open_zip
from pipeline.source.messages import describe, plain, printable
from pipeline.source.pickle_scan import ZIP_MAGIC
from pipeline.source.remote import RemoteArchive
from pipeline.source.torch_load import decode_sample
from pipeline.urls import is_url

#: A sample is ~30 MB decoded at most (float32 masks); anything far larger is not a sample.
MAX_MEMBER_BYTES = 1 << 30
#: Deflate's worst case adds 5 bytes per 16 KiB block; compressed data beyond this is no sample either.
MAX_COMPRESSED_BYTES = MAX_MEMBER_BYTES + (MAX_MEMBER_BYTES >> 10) + 1024
#: Bytes read beyond a local header's name and extra as the central directory gives their lengths:
#: the local extra field may be longer (zip64 sizes, timestamps); a member still costs one read.
LOCAL_HEADER_MARGIN = 256

#: A zip local file header (signature ... file name length, extra field length), as in zipfile.
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
_ZIP64_EXTRA_ID = 0x0001  # the extra field holding 64-bit sizes when a 32-bit field reads 0xFFFFFFFF
_MASK_ENCRYPTED = 0x0001
_MASK_DATA_DESCRIPTOR = 0x0008  # CRC and sizes follow the data; the local header holds zeros
_MASK_UTF8_NAME = 0x0800


class SourceReader:
    """Reads members of one source, keeping the zip open across the members of a task."""

    def __init__(self, source: str) -> None:
        self.source = source
        if is_url(source):
            self._file = RemoteArchive(source).open()
            self._zip = open_zip(source, self._file)
            return
        self._zip = None if os.path.isdir(source) else open_zip(source)
        try:
            self._file = None if self._zip is None else open(source, "rb")
        except OSError as exc:
            self._zip.close()
            raise SourceError(source, None, f"cannot be opened ({describe(exc)})") from exc

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
            if info.compress_size > MAX_COMPRESSED_BYTES:
                reason = f"declares {info.compress_size} compressed bytes, far more than a sample"
                raise SourceError(self.source, member, reason)
            if (
                info.compress_type in (zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED)
                and not info.flag_bits & _MASK_ENCRYPTED
            ):
                return self._read_member_fast(info)
            with self._zip.open(info) as file:  # bzip2, lzma, encrypted: zipfile knows best
                return _read_bounded(file, self.source, member)
        except (SourceError, UnavailableError, MemoryError):  # a network outage is no bad member
            raise
        except Exception as exc:  # zipfile, bz2, lzma, OSError...: whatever a damaged member makes them raise
            raise SourceError(self.source, member, f"cannot be read ({describe(exc)})") from exc

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
        # One read for header, name, extra and data (one request at a URL), the name and extra
        # lengths taken from the directory plus a margin; a second read only if the local ones are longer.
        guess = _LOCAL_HEADER.size + len(info.orig_filename.encode()) + len(info.extra) + LOCAL_HEADER_MARGIN
        record = self._read_at(info.header_offset, guess + info.compress_size)
        if len(record) < _LOCAL_HEADER.size or record[:4] != ZIP_MAGIC:
            raise SourceError(self.source, name, "bad local file header (truncated or corrupt zip)")
        fields = _LOCAL_HEADER.unpack_from(record)
        flags, method, crc, compress_size, file_size, name_length, extra_length = fields[3:5] + fields[7:]
        data_start = _LOCAL_HEADER.size + name_length + extra_length
        if len(record) < data_start + info.compress_size and len(record) == guess + info.compress_size:
            record += self._read_at(info.header_offset + len(record), data_start + info.compress_size - len(record))
        view = memoryview(record)
        local_name = bytes(view[_LOCAL_HEADER.size : _LOCAL_HEADER.size + name_length])
        extra = bytes(view[_LOCAL_HEADER.size + name_length : data_start])
        if len(record) < data_start:
            raise SourceError(self.source, name, "bad local file header (the zip ends inside it)")
        disagreement = _local_header_disagreement(info, flags, method, crc, compress_size, file_size, local_name, extra)
        if disagreement:
            raise SourceError(self.source, name, f"local header disagrees with the central directory ({disagreement})")
        raw = view[data_start : data_start + info.compress_size]
        if len(raw) != info.compress_size:
            raise SourceError(self.source, name, "is truncated (the zip ends inside it)")
        if info.compress_type == zipfile.ZIP_STORED:
            if info.compress_size != info.file_size:
                reason = f"is stored, yet its size {info.file_size} differs from its stored size {info.compress_size}"
                raise SourceError(self.source, name, reason)
            data = bytes(raw)
        else:
            data = self._inflate(info, raw)
        if zlib_ng.crc32(data) != info.CRC:
            raise SourceError(self.source, name, "CRC-32 mismatch: the member is corrupt")
        return data

    def _read_at(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset``: fewer only where the archive ends."""
        self._file.seek(offset)
        return self._file.read(length)

    def _inflate(self, info: zipfile.ZipInfo, raw: memoryview) -> bytes:
        """Inflate ``raw`` to exactly ``info.file_size`` bytes, or say plainly why not.

        zlib-ng raises its own ``zlib_ng.error`` (no subclass of ``zlib.error``) for an invalid stream.
        """
        inflater = zlib_ng.decompressobj(-15)
        try:
            data = inflater.decompress(raw, info.file_size + 1)
        except zlib_ng.error as exc:
            reason = f"its compressed data is not a valid deflate stream ({plain(exc) or 'zlib-ng refused it'})"
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
        return f"file name '{printable(decoded)}'"
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
