"""A zip member's local header, checked against its central directory entry, and the raw data it precedes.

The fast reader takes sizes from the directory and the data's offset from the local header; if the
two disagree, one of them is damaged and the member cannot be trusted. This is what ``zipfile``
checks (signature, file name) and more: method, flags, CRC-32 and sizes, 64-bit ones included.
"""

from __future__ import annotations

import struct
import zipfile
from typing import Callable, NamedTuple

from pipeline.errors import SourceError
from pipeline.source.messages import printable
from pipeline.source.pickle_scan import ZIP_MAGIC

#: Bytes read beyond a local header's name and extra as the central directory gives their lengths:
#: the local extra field may be longer (zip64 sizes, timestamps); a member still costs one read.
LOCAL_HEADER_MARGIN = 256
MASK_ENCRYPTED = 0x0001
MASK_DATA_DESCRIPTOR = 0x0008  # CRC and sizes follow the data; the local header holds zeros
MASK_STRONG_ENCRYPTION = 0x0040  # PKWARE's strong encryption (SES), which no open tool reads
MASK_UTF8_NAME = 0x0800

#: A zip local file header (signature ... file name length, extra field length), as in zipfile.
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
_ZIP64_EXTRA_ID = 0x0001  # the extra field holding 64-bit sizes when a 32-bit field reads 0xFFFFFFFF


class MemberData(NamedTuple):
    """A member's raw (compressed, maybe encrypted) data, and the DOS time its local header gives:
    a ZipCrypto member whose CRC follows in a data descriptor checks its password against the latter."""

    raw: memoryview
    local_time: int


def member_data(read_at: Callable[[int, int], bytes], source: str, info: zipfile.ZipInfo) -> MemberData:
    """The raw (compressed, maybe encrypted) data of a member, after checking its local header.

    One read for header, name, extra and data (one request at a URL), the name and extra lengths
    taken from the directory plus a margin; a second read only if the local ones are longer. The
    data's place comes from the local header's own lengths, which differ from the directory's for
    zip64 members.
    """
    name = info.filename
    guess = _LOCAL_HEADER.size + len(info.orig_filename.encode()) + len(info.extra) + LOCAL_HEADER_MARGIN
    record = read_at(info.header_offset, guess + info.compress_size)
    if len(record) < _LOCAL_HEADER.size or record[:4] != ZIP_MAGIC:
        raise SourceError(source, name, "bad local file header (truncated or corrupt zip)")
    fields = _LOCAL_HEADER.unpack_from(record)
    flags, method, local_time = fields[3:6]
    crc, compress_size, file_size, name_length, extra_length = fields[7:]
    data_start = _LOCAL_HEADER.size + name_length + extra_length
    if len(record) < data_start + info.compress_size and len(record) == guess + info.compress_size:
        record += read_at(info.header_offset + len(record), data_start + info.compress_size - len(record))
    view = memoryview(record)
    local_name = bytes(view[_LOCAL_HEADER.size : _LOCAL_HEADER.size + name_length])
    extra = bytes(view[_LOCAL_HEADER.size + name_length : data_start])
    if len(record) < data_start:
        raise SourceError(source, name, "bad local file header (the zip ends inside it)")
    disagreement = _local_header_disagreement(info, flags, method, crc, compress_size, file_size, local_name, extra)
    if disagreement:
        raise SourceError(source, name, f"local header disagrees with the central directory ({disagreement})")
    raw = view[data_start : data_start + info.compress_size]
    if len(raw) != info.compress_size:
        raise SourceError(source, name, "is truncated (the zip ends inside it)")
    return MemberData(raw, local_time)


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
    decoded = local_name.decode("utf-8" if flags & MASK_UTF8_NAME else "cp437", errors="replace")
    if decoded != info.orig_filename:
        return f"file name '{printable(decoded)}'"
    if method != info.compress_type:
        return f"compression method {method}, the directory says {info.compress_type}"
    if (flags ^ info.flag_bits) & MASK_ENCRYPTED:
        return "encryption flag"
    if flags & MASK_DATA_DESCRIPTOR:
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
