"""Encrypted members of synthetic archives: ZipCrypto or WinZip AES-256 (AE-2), as the release may be.

``zipfile`` writes no encrypted member, so each one is written by ``zipfile`` as a stored member
whose bytes are the compressed and encrypted data; its ``ZipInfo`` then gets the real method,
flags, CRC-32 and size, and its local header is written again in place (the same length: only
fixed-size fields change). The central directory is written from the same ``ZipInfo`` on close.
Members use no data descriptor, so a ZipCrypto header's check byte is the CRC-32's high byte.
"""

from __future__ import annotations

import zipfile
import zlib

from pipeline.errors import UsageError
from pipeline.source.passwords import Password
from pipeline.source.zip_crypto import AES_METHOD, ENCRYPTIONS, AesParameters, aes_encrypt, zipcrypto_encrypt
from pipeline.source.zip_local import MASK_ENCRYPTED

#: Version needed to extract a WinZip AES member (its specification's value).
AES_EXTRACT_VERSION = 51


def write_encrypted(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, data: bytes, password: Password, encryption: str
) -> None:
    """Write ``data`` as the member ``info`` (deflated or stored, as it says), encrypted with ``password``."""
    method = info.compress_type
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    compressed = compressor.compress(data) + compressor.flush() if method == zipfile.ZIP_DEFLATED else data
    crc = zlib.crc32(data)
    if encryption == "zipcrypto":
        payload, stored_crc, extra = zipcrypto_encrypt(compressed, password.reveal(), crc >> 24), crc, b""
    elif encryption == "aes":
        params = AesParameters(version=2, key_bytes=32, method=method)
        payload, stored_crc, extra = aes_encrypt(compressed, password.reveal(), params), 0, params.to_extra()
        method = AES_METHOD
        info.extract_version = AES_EXTRACT_VERSION
    else:
        raise UsageError(f"encryption must be one of {ENCRYPTIONS}, not {encryption!r}")
    info.compress_type = zipfile.ZIP_STORED
    info.extra = extra
    archive.writestr(info, payload)
    info.compress_type, info.CRC, info.file_size = method, stored_crc, len(data)
    info.flag_bits |= MASK_ENCRYPTED
    end = archive.fp.tell()
    archive.fp.seek(info.header_offset)
    archive.fp.write(info.FileHeader(False))
    archive.fp.seek(end)
