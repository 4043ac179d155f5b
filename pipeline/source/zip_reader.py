"""Reading members of a source, fast and checked: zip members decrypted and inflated, or files of a tree.

Every failure is a :class:`SourceError` naming archive, member and reason, so that ``--skip-bad``
rejects exactly the bad members and nothing surfaces as a traceback. A zip at a URL is read the
same way, through :class:`pipeline.source.remote.RangedFile`: a member costs one ranged request.

A member is read in three checked steps, each in its own module: its local header and raw data
(:mod:`~pipeline.source.zip_local`), decryption with the archive's password (ZipCrypto or WinZip
AES, :mod:`~pipeline.source.zip_crypto`), and decompression (:mod:`~pipeline.source.zip_methods`);
then its CRC-32 is checked (AE-2 members store none: their HMAC was checked instead).
"""

from __future__ import annotations

import os
import zipfile
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
from zlib_ng import zlib_ng

from pipeline.errors import PasswordError, SourceError, UnavailableError
from pipeline.source.members import open_zip
from pipeline.source.messages import describe
from pipeline.source.passwords import NO_PASSWORDS, Password, Passwords
from pipeline.source.remote import RemoteArchive
from pipeline.source.torch_load import decode_sample
from pipeline.source.zip_crypto import (
    AES_METHOD,
    DecryptionError,
    aes_decrypt,
    aes_parameters,
    zipcrypto_check_byte,
    zipcrypto_decrypt,
)
from pipeline.source.zip_local import MASK_DATA_DESCRIPTOR, MASK_ENCRYPTED, MASK_STRONG_ENCRYPTION, member_data
from pipeline.source.zip_methods import DecompressionError, decompress
from pipeline.urls import is_url

#: A sample is ~30 MB decoded at most (float32 masks); anything far larger is not a sample.
MAX_MEMBER_BYTES = 1 << 30
#: Deflate's worst case adds 5 bytes per 16 KiB block; compressed data beyond this is no sample either.
MAX_COMPRESSED_BYTES = MAX_MEMBER_BYTES + (MAX_MEMBER_BYTES >> 10) + 1024


class SourceReader:
    """Reads members of one source, keeping the zip open across the members of a task.

    ``password`` opens its encrypted members; a member that is encrypted when none was given is
    a :class:`PasswordError` (planning finds that before any task runs). A source at a URL is
    opened with ``storage_options`` (those of its URL only).
    """

    def __init__(
        self, source: str, password: Password | None = None, storage_options: Mapping[str, Any] | None = None
    ) -> None:
        self.source = source
        self._password = password
        if is_url(source):
            self._file = RemoteArchive(source, storage_options).open()
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

    def infolist(self) -> list[zipfile.ZipInfo]:
        """The zip's directory entries (none for an extracted tree), as opened once for all reads."""
        return [] if self._zip is None else self._zip.infolist()

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
            return self._read_member(info)
        except (SourceError, UnavailableError, MemoryError):  # a network outage is no bad member
            raise
        except Exception as exc:  # OSError...: whatever a damaged member makes a library raise
            raise SourceError(self.source, member, f"cannot be read ({describe(exc)})") from exc

    def _read_member(self, info: zipfile.ZipInfo) -> bytes:
        """Raw data, decrypted, decompressed to exactly its declared size, its CRC-32 checked.

        zipfile's own reader inflates with the standard zlib (a third of a sample's conversion
        time), decrypts ZipCrypto in pure Python (0.4 MB/s) and reads neither AES nor Deflate64.
        """
        raw, local_time = member_data(self._read_at, self.source, info)
        plain, method, has_crc = self._decrypted(info, raw, local_time)
        try:
            data = decompress(method, plain, info.file_size)
        except DecompressionError as exc:
            raise SourceError(self.source, info.filename, str(exc)) from None
        if has_crc and zlib_ng.crc32(data) != info.CRC:
            raise SourceError(self.source, info.filename, "CRC-32 mismatch: the member is corrupt")
        return data

    def _decrypted(
        self, info: zipfile.ZipInfo, raw: memoryview, local_time: int
    ) -> tuple[memoryview | bytes, int, bool]:
        """(the member's compressed data, its compression method, whether it has a CRC-32 to check)."""
        name = info.filename
        if info.flag_bits & MASK_STRONG_ENCRYPTION:
            reason = "uses PKWARE strong encryption, which no open tool reads: re-pack it with AES or ZipCrypto"
            raise SourceError(self.source, name, reason)
        aes = aes_parameters(info.extra) if info.compress_type == AES_METHOD else None
        if info.compress_type == AES_METHOD and aes is None:
            raise SourceError(self.source, name, "is WinZip AES (method 99) without a valid 0x9901 extra field")
        if not info.flag_bits & MASK_ENCRYPTED:
            if aes is not None:
                raise SourceError(self.source, name, "is WinZip AES (method 99) without the encryption flag")
            return raw, info.compress_type, True
        if self._password is None:
            raise PasswordError(self.source, name, "is encrypted, and no password was given for this archive")
        try:
            if aes is not None:
                return aes_decrypt(raw, self._password.reveal(), aes), aes.method, aes.version == 1
            check = zipcrypto_check_byte(info.CRC, local_time, bool(info.flag_bits & MASK_DATA_DESCRIPTOR))
            return zipcrypto_decrypt(raw, self._password.reveal(), check), info.compress_type, True
        except DecryptionError as exc:
            raise (PasswordError if exc.password_refused else SourceError)(self.source, name, exc.reason) from None

    def _read_at(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset``: fewer only where the archive ends."""
        self._file.seek(offset)
        return self._file.read(length)

    def read_sample(self, member: str) -> dict[str, np.ndarray]:
        return decode_sample(self.read_bytes(member), self.source, member)


def _read_bounded(file, archive: str, member: str) -> bytes:
    data = file.read(MAX_MEMBER_BYTES + 1)
    if len(data) > MAX_MEMBER_BYTES:
        raise SourceError(archive, member, f"inflates to more than {MAX_MEMBER_BYTES} bytes")
    return data


class Readers:
    """One open :class:`SourceReader` per archive, for a task that reads members of several (those
    at URLs opened with ``storage_options``)."""

    def __init__(self, passwords: Passwords = NO_PASSWORDS, storage_options: Mapping[str, Any] | None = None) -> None:
        self._passwords = passwords
        self._storage_options = storage_options
        self._readers: dict[str, SourceReader] = {}

    def __enter__(self) -> "Readers":
        return self

    def __exit__(self, *exc_info) -> None:
        for reader in self._readers.values():
            reader.close()

    def read_sample(self, archive: str, member: str) -> dict[str, np.ndarray]:
        if archive not in self._readers:
            password = self._passwords.for_archive(archive)
            self._readers[archive] = SourceReader(archive, password, self._storage_options)
        return self._readers[archive].read_sample(member)


def read_samples(
    locations: Iterable[tuple[str, str]],
    passwords: Passwords = NO_PASSWORDS,
    storage_options: Mapping[str, Any] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Decode ``(archive, member)`` locations in order; the first bad one raises."""
    with Readers(passwords, storage_options) as readers:
        for archive, member in locations:
            yield readers.read_sample(archive, member)
