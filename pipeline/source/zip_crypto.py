"""Decrypting zip members: traditional PKWARE encryption ("ZipCrypto") and WinZip AES (AE-1, AE-2).

The complete SSMSpine release is password-protected. Info-ZIP and most tools write ZipCrypto;
7-Zip and WinZip write AES when asked (``-mem=AES256``). Both are decrypted here from the member's
raw bytes, so the rest of the checked reading (inflate, sizes, CRC-32) stays the same.

**ZipCrypto** (APPNOTE 6.1) is a byte-serial stream cipher: each key update depends on the byte
just decrypted, so it cannot be vectorised. Measured on this project's 2-core machine, on 32 MB:
Python's own ``zipfile`` decrypter 1.9 MB/s (17 hours per core for the 25 GB release);
stream-unzip's Cython decrypter (a private module of that package) 73 MB/s; fast-zip-decryption's
C decrypter 113 MB/s. We take the last: compiled, the fastest, a public class
(``_zipdecrypter.StandardZipDecrypter``), MIT, maintained by ratarmount's author. We import only its
extension module, never ``fast_zip_decryption`` itself, which would patch ``zipfile`` globally.
Its 12-byte header ends in one check byte, so 1 wrong password in 256 passes it; only a whole
member's CRC-32 proves a password (:mod:`pipeline.source.unlock` does that while planning).

**WinZip AES** is method 99 with an extra field 0x9901 naming the real method and the key size.
The member's data is salt (8/12/16 bytes), a 2-byte password verifier, the AES-CTR ciphertext and
a 10-byte HMAC-SHA1 of the ciphertext; the keys come from PBKDF2-HMAC-SHA1 (1000 rounds). Its
counter is little-endian and starts at 1, which no library's CTR mode does (OpenSSL's is
big-endian), so the key stream is AES-ECB of the counter blocks, made with numpy: compiled AES
(``cryptography``) at several GB/s. AE-2 stores no CRC-32: the HMAC is its check.

The encrypting halves exist for ``ssmspine synth --encrypt``: ZipCrypto's is plain Python
(about 2 MB/s: no library writes ZipCrypto), AES's uses the same key stream as decryption.
"""

from __future__ import annotations

import hmac
import os
import struct
from dataclasses import dataclass

import _zipdecrypter
import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

#: The encryptions that the encrypting halves below write (``ssmspine synth --encrypt``), "none" first.
ENCRYPTIONS = ("none", "zipcrypto", "aes")
#: The encryption header before a ZipCrypto member's data.
ZIPCRYPTO_HEADER_BYTES = 12
#: The compression method of a WinZip AES member; its extra field names the real one.
AES_METHOD = 99
AES_EXTRA_ID = 0x9901
AES_VERIFIER_BYTES = 2
AES_MAC_BYTES = 10
PBKDF2_ROUNDS = 1000
#: Key bytes by the extra field's strength byte (salt bytes are half as many).
AES_KEY_BYTES = {1: 16, 2: 24, 3: 32}

_AES_BODY = struct.Struct("<H2sBH")  # vendor version, vendor id "AE", strength, real method
_AES_BLOCK = 16


class DecryptionError(Exception):
    """A member does not decrypt. ``password_refused``: the password's own check said no (the check
    byte or the verifier), rather than the data's (HMAC)."""

    def __init__(self, reason: str, password_refused: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.password_refused = password_refused


@dataclass(frozen=True)
class AesParameters:
    """What a WinZip AES member's extra field 0x9901 says."""

    version: int  # 1: AE-1 (CRC-32 stored), 2: AE-2 (CRC-32 stored as 0)
    key_bytes: int
    method: int  # the compression method of the plaintext

    @property
    def salt_bytes(self) -> int:
        return self.key_bytes // 2

    @property
    def overhead(self) -> int:
        """Bytes of the member that are not ciphertext: salt, verifier, authentication code."""
        return self.salt_bytes + AES_VERIFIER_BYTES + AES_MAC_BYTES

    def to_extra(self) -> bytes:
        """The extra field record that announces these parameters (for synthetic archives)."""
        body = _AES_BODY.pack(self.version, b"AE", self.strength, self.method)
        return struct.pack("<HH", AES_EXTRA_ID, len(body)) + body

    @property
    def strength(self) -> int:
        return {16: 1, 24: 2, 32: 3}[self.key_bytes]


def aes_parameters(extra: bytes) -> AesParameters | None:
    """The AES parameters in an extra field, or None where it has no well-formed 0x9901 record."""
    while len(extra) >= 4:
        kind, length = struct.unpack_from("<HH", extra)
        body = extra[4 : 4 + length]
        if kind == AES_EXTRA_ID:
            if len(body) < _AES_BODY.size:
                return None
            version, vendor, strength, method = _AES_BODY.unpack_from(body)
            if vendor != b"AE" or version not in (1, 2) or strength not in AES_KEY_BYTES:
                return None
            return AesParameters(version=version, key_bytes=AES_KEY_BYTES[strength], method=method)
        extra = extra[4 + length :]
    return None


def zipcrypto_check_byte(crc: int, local_time: int, data_descriptor: bool) -> int:
    """What a ZipCrypto header's last byte decrypts to (APPNOTE 6.1.6): the CRC-32's high byte, or, where
    the CRC follows the data (flag bit 3), the high byte of the DOS time in the member's local header
    (Info-ZIP's ``unzip`` checks that header's, not the central directory's)."""
    return (local_time >> 8) & 0xFF if data_descriptor else crc >> 24


def zipcrypto_decrypt(raw: bytes | memoryview, password: bytes, check_byte: int) -> bytes:
    """The plaintext of a ZipCrypto member's data (its 12-byte header included in ``raw``).

    ``check_byte`` is what the header's last byte must decrypt to: the CRC-32's high byte, or the
    modification time's high byte for a member whose CRC follows in a data descriptor.
    """
    if len(raw) < ZIPCRYPTO_HEADER_BYTES:
        raise DecryptionError("is too short for its encryption header (truncated)", password_refused=False)
    decrypter = _zipdecrypter.StandardZipDecrypter(password)
    header = decrypter.decrypt_bytes(bytes(raw[:ZIPCRYPTO_HEADER_BYTES]))
    if header[-1] != check_byte:
        raise DecryptionError("its encryption header does not match the password", password_refused=True)
    return decrypter.decrypt_bytes(bytes(raw[ZIPCRYPTO_HEADER_BYTES:]))


def aes_decrypt(raw: bytes | memoryview, password: bytes, params: AesParameters) -> np.ndarray:
    """The plaintext of a WinZip AES member's data, after checking its verifier and HMAC-SHA1."""
    raw = memoryview(raw)
    if len(raw) < params.overhead:
        raise DecryptionError("is too short for its AES salt, verifier and authentication code (truncated)", False)
    salt = raw[: params.salt_bytes]
    verifier = raw[params.salt_bytes : params.salt_bytes + AES_VERIFIER_BYTES]
    ciphertext = raw[params.salt_bytes + AES_VERIFIER_BYTES : len(raw) - AES_MAC_BYTES]
    cipher_key, mac_key, expected_verifier = _aes_keys(password, bytes(salt), params.key_bytes)
    if bytes(verifier) != expected_verifier:
        raise DecryptionError("its AES password verifier does not match the password", True)
    if not hmac.compare_digest(_mac(mac_key, ciphertext), bytes(raw[len(raw) - AES_MAC_BYTES :])):
        reason = "its AES authentication code does not match: the encrypted data is damaged or truncated"
        raise DecryptionError(reason, password_refused=False)
    return _ctr_xor(cipher_key, ciphertext)


def _aes_keys(password: bytes, salt: bytes, key_bytes: int) -> tuple[bytes, bytes, bytes]:
    """(AES key, HMAC key, password verifier) from PBKDF2-HMAC-SHA1, as WinZip derives them."""
    kdf = PBKDF2HMAC(hashes.SHA1(), length=2 * key_bytes + AES_VERIFIER_BYTES, salt=salt, iterations=PBKDF2_ROUNDS)
    keys = kdf.derive(password)
    return keys[:key_bytes], keys[key_bytes : 2 * key_bytes], keys[2 * key_bytes :]


def _mac(mac_key: bytes, ciphertext: memoryview | bytes) -> bytes:
    return hmac.new(mac_key, ciphertext, "sha1").digest()[:AES_MAC_BYTES]


def _ctr_xor(key: bytes, data: memoryview | bytes) -> np.ndarray:
    """``data`` XOR the key stream of WinZip's AES-CTR: AES of little-endian counters 1, 2, 3, ..."""
    blocks = -(-len(data) // _AES_BLOCK)
    counters = np.zeros((blocks, 2), dtype="<u8")
    counters[:, 0] = np.arange(1, blocks + 1, dtype="<u8")
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    stream = np.frombuffer(encryptor.update(counters.tobytes()), dtype=np.uint8)[: len(data)]
    return np.bitwise_xor(np.frombuffer(data, dtype=np.uint8), stream)


def aes_encrypt(plaintext: bytes, password: bytes, params: AesParameters, salt: bytes | None = None) -> bytes:
    """A WinZip AES member's data: salt, verifier, ciphertext, authentication code."""
    salt = os.urandom(params.salt_bytes) if salt is None else salt
    cipher_key, mac_key, verifier = _aes_keys(password, salt, params.key_bytes)
    ciphertext = _ctr_xor(cipher_key, plaintext).tobytes()
    return salt + verifier + ciphertext + _mac(mac_key, ciphertext)


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        value = byte
        for _ in range(8):
            value = (value >> 1) ^ 0xEDB88320 if value & 1 else value >> 1
        table.append(value)
    return table


_CRC_TABLE = _crc_table()


class _ZipCryptoKeys:
    """ZipCrypto's three keys, as APPNOTE 6.1.5 initialises and updates them."""

    def __init__(self) -> None:
        self.key0, self.key1, self.key2 = 0x12345678, 0x23456789, 0x34567890

    def update(self, byte: int) -> None:
        self.key0 = _CRC_TABLE[(self.key0 ^ byte) & 0xFF] ^ (self.key0 >> 8)
        self.key1 = ((self.key1 + (self.key0 & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
        self.key2 = _CRC_TABLE[(self.key2 ^ (self.key1 >> 24)) & 0xFF] ^ (self.key2 >> 8)


def zipcrypto_encrypt(plaintext: bytes, password: bytes, check_byte: int, header: bytes | None = None) -> bytes:
    """A ZipCrypto member's data: the 12-byte header (11 random bytes and ``check_byte``) and ciphertext.

    Plain Python, about 2 MB/s: it serves the synthetic archives only, and no library writes ZipCrypto.
    """
    keys = _ZipCryptoKeys()
    for byte in password:
        keys.update(byte)
    header = (os.urandom(ZIPCRYPTO_HEADER_BYTES - 1) if header is None else header) + bytes([check_byte])
    out = bytearray(header + plaintext)
    table = _CRC_TABLE
    key0, key1, key2 = keys.key0, keys.key1, keys.key2
    for index, byte in enumerate(out):
        stream = key2 | 2
        out[index] = byte ^ (((stream * (stream ^ 1)) >> 8) & 0xFF)
        key0 = table[(key0 ^ byte) & 0xFF] ^ (key0 >> 8)
        key1 = ((key1 + (key0 & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
        key2 = table[(key2 ^ (key1 >> 24)) & 0xFF] ^ (key2 >> 8)
    return bytes(out)
