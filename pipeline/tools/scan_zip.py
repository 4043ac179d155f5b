"""What a zip's central directory tells before any member is read: compression methods, encryption,
zip64, and the sample entries that cannot be read whatever their data holds (``ssmspine scan``).

Everything here is a function of the directory's ``ZipInfo`` records and the archive's last bytes,
so scanning a 20 GB release at a URL costs the requests that open it. The checks of :func:`damage`
are those the member reader (:mod:`pipeline.source.zip_reader`) makes before it reads a member's
data; made here for every entry at once, they name every such entry before a conversion stops at
the first one.
"""

from __future__ import annotations

import os
import struct
import zipfile
from collections import Counter
from typing import Collection, Sequence

from pipeline.source.zip_crypto import AES_METHOD, aes_parameters
from pipeline.source.zip_local import MASK_ENCRYPTED, MASK_STRONG_ENCRYPTION
from pipeline.source.zip_methods import SUPPORTED, method_name
from pipeline.source.zip_reader import MAX_COMPRESSED_BYTES, MAX_MEMBER_BYTES
from pipeline.tools.scan_records import Encryption, Problem, Problems, Zip64, ZipDirectory

#: The extra field holding 64-bit sizes and offsets (APPNOTE 4.5.3).
ZIP64_EXTRA_ID = 0x0001
END_RECORD = b"PK\x05\x06"
ZIP64_LOCATOR = b"PK\x06\x07"
END_RECORD_BYTES = 22
LOCATOR_BYTES = 20
LOCAL_HEADER_BYTES = 30
MAX_COMMENT_BYTES = 0xFFFF


def zip64_end_records(archive: zipfile.ZipFile) -> tuple[int, bool]:
    """(the archive's size, whether the zip64 end-of-central-directory locator sits right before
    its end record).

    Read through the file ``zipfile`` opened, the last bytes only: at a URL that is the
    :class:`~pipeline.source.remote.RangedFile`, which holds them since opening, so no request is
    made (unless a comment of kilobytes follows the end record: then one more).
    """
    file = archive.fp
    size = file.seek(0, os.SEEK_END)
    for span in (END_RECORD_BYTES + LOCATOR_BYTES, END_RECORD_BYTES + LOCATOR_BYTES + MAX_COMMENT_BYTES):
        start = max(0, size - span)
        file.seek(start)
        tail = file.read(size - start)
        at = end_record_at(tail)
        if at is not None:
            return size, at >= LOCATOR_BYTES and tail[at - LOCATOR_BYTES : at - LOCATOR_BYTES + 4] == ZIP64_LOCATOR
        if start == 0:
            break
    return size, False


def end_record_at(tail: bytes) -> int | None:
    """Where the end record starts in an archive's last bytes ``tail``: the last signature whose
    comment length reaches the end exactly (a comment may hold the signature too); None if none does."""
    at = tail.rfind(END_RECORD)
    while at >= 0:
        if at + END_RECORD_BYTES <= len(tail):
            (comment,) = struct.unpack_from("<H", tail, at + END_RECORD_BYTES - 2)
            if comment == len(tail) - at - END_RECORD_BYTES:
                return at
        at = tail.rfind(END_RECORD, 0, at)
    return None


def has_zip64_extra(extra: bytes) -> bool:
    """True for an extra field holding a zip64 record (what a member past 4 GB, or at an offset
    past 4 GB, needs)."""
    while len(extra) >= 4:
        kind, length = struct.unpack_from("<HH", extra)
        if kind == ZIP64_EXTRA_ID:
            return True
        extra = extra[4 + length :]
    return False


def method_label(info: zipfile.ZipInfo) -> str:
    """The entry's compression, for AES the method inside it with the key size and AE version:
    the release's readers differ in what they read (Deflate64, AES), so the name says it all."""
    if info.compress_type != AES_METHOD:
        return method_name(info.compress_type)
    aes = aes_parameters(info.extra)
    if aes is None:
        return f"{method_name(AES_METHOD)} without a valid 0x9901 extra field"
    return f"{method_name(aes.method)} in WinZip AES-{8 * aes.key_bytes} (AE-{aes.version})"


def encryption_kind(info: zipfile.ZipInfo) -> str:
    """``"none"``, ``"zipcrypto"``, ``"aes"`` or ``"strong"``: the :class:`Encryption` field it counts in."""
    if info.flag_bits & MASK_STRONG_ENCRYPTION:
        return "strong"
    if not info.flag_bits & MASK_ENCRYPTED:
        return "none"
    return "aes" if info.compress_type == AES_METHOD else "zipcrypto"


def damage(info: zipfile.ZipInfo, size: int) -> str | None:
    """Why the member reader refuses this entry whatever its data, or None where the directory
    shows nothing wrong (its data may still be damaged: only reading it tells)."""
    if info.flag_bits & MASK_STRONG_ENCRYPTION:
        return "uses PKWARE strong encryption, which no open tool reads: re-pack it with AES or ZipCrypto"
    method = info.compress_type
    if method == AES_METHOD:
        aes = aes_parameters(info.extra)
        if aes is None:
            return "is WinZip AES (method 99) without a valid 0x9901 extra field"
        if not info.flag_bits & MASK_ENCRYPTED:
            return "is WinZip AES (method 99) without the encryption flag"
        method = aes.method
    if method not in SUPPORTED:
        return f"uses the compression {method_name(method)}, which is not supported"
    if info.file_size > MAX_MEMBER_BYTES:
        return f"declares {info.file_size} bytes, far more than a sample"
    if info.compress_size > MAX_COMPRESSED_BYTES:
        return f"declares {info.compress_size} compressed bytes, far more than a sample"
    if info.header_offset >= size:
        return f"its local header offset {info.header_offset} lies beyond the archive's {size} bytes"
    end = info.header_offset + LOCAL_HEADER_BYTES + info.compress_size
    if end > size:
        return f"its data would end at byte {end} at the earliest, beyond the archive's {size} bytes"
    return None


def read_directory(
    infos: Sequence[zipfile.ZipInfo], samples: Collection[str], size: int, end_records: bool
) -> ZipDirectory:
    """The directory's facts over all file entries ``infos``; damage only among the ``samples``
    (junk is skipped and names outside the layout are listed apart, whatever their entries say)."""
    damaged = [Problem(i.filename, reason) for i in infos if i.filename in samples and (reason := damage(i, size))]
    return ZipDirectory(
        entries=len(infos),
        methods=dict(Counter(method_label(i) for i in infos).most_common()),
        encryption=Encryption(**Counter(encryption_kind(i) for i in infos)),
        zip64=Zip64(end_records=end_records, entries=sum(has_zip64_extra(i.extra) for i in infos)),
        damaged=Problems.of(damaged),
    )
