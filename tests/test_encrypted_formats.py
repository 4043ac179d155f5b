"""Encrypted and unusually compressed zips written by independent tools, read bit for bit or refused in one line.

The release is password-protected, and whoever re-packs it may use Info-ZIP (ZipCrypto, data
descriptors), 7-Zip (ZipCrypto or WinZip AES-2, Deflate64, bzip2, LZMA) or a Python writer
(pyzipper: AES-1 or AES-2). Every such archive of one small extracted tree must read byte for byte
as the plain files; a wrong or missing password must stop the run before any work, naming the
archive; damaged ciphertext must be a :class:`SourceError` naming the member (what ``--skip-bad``
rejects), never taken for a wrong password.

Archives hold the tiny samples of ``test_damaged_archives`` and are built once per module.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import _zipdecrypter
import pytest
import pyzipper
from test_damaged_archives import (
    DAMAGED_DATA,
    LOCAL,
    MEMBERS,
    VICTIM,
    central_entry,
    cut_member_data,
    data_span,
    patch,
    tiny_members,
)

from pipeline.errors import PasswordError, SourceError
from pipeline.source.passwords import NO_PASSWORDS, Password, Passwords
from pipeline.source.unlock import check_passwords, is_encrypted, try_password
from pipeline.source.zip_reader import SourceReader

from conftest import assert_bit_exact

PASSWORD = "format matrix: pw #1"
ROOT = "Train"
STORED, DEFLATED, DEFLATE64, BZIP2, LZMA = 0, 8, 9, 12, 14
AES_EXTRA_ID = 0x9901
#: What reading with a wrong key or altered ZipCrypto ciphertext says: the data's own checks.
BAD_PLAINTEXT = rf".*({DAMAGED_DATA}|not a valid (Deflate64|bzip2|LZMA) stream)"
AES_MAC = "its AES authentication code does not match: the encrypted data is damaged or truncated"


# ------------------------------------------------------------------------------------------
# The writers, and what each archive's encrypted members must declare
# ------------------------------------------------------------------------------------------


def _info_zip(*options: str, streamed: bool = False) -> Callable[[Path, Path, list[str]], None]:
    """Info-ZIP ``zip``; ``streamed``: written to a pipe, so that it cannot seek back to its local
    headers (CRC-32 and sizes only in the data descriptors)."""

    def write(tree: Path, archive: Path, names: list[str]) -> None:
        command = ["zip", "-q", "-r", *options, "-" if streamed else str(archive), *names]
        result = subprocess.run(command, cwd=tree, check=True, capture_output=True)
        if streamed:
            archive.write_bytes(result.stdout)

    return write


def _seven_zip(method: str, encryption: str | None = None) -> Callable[[Path, Path, list[str]], None]:
    def write(tree: Path, archive: Path, names: list[str]) -> None:
        secret = [f"-p{PASSWORD}", f"-mem={encryption}"] if encryption else []
        command = ["7z", "a", "-tzip", "-bd", "-bso0", f"-mm={method}", *secret, str(archive), *names]
        subprocess.run(command, cwd=tree, check=True, capture_output=True)

    return write


def _pyzipper(version: int, bits: int, compression: int) -> Callable[[Path, Path, list[str]], None]:
    """pyzipper's WinZip AES writer, told which version (it picks AE-2 unless forced)."""

    def write(tree: Path, archive: Path, names: list[str]) -> None:
        files = sorted(p for name in names for p in [tree / name, *(tree / name).rglob("*")] if p.is_file())
        with pyzipper.AESZipFile(archive, "w", compression=compression) as out:
            out.setpassword(PASSWORD.encode())
            out.setencryption(pyzipper.WZ_AES, nbits=bits, force_wz_aes_version=version)
            for path in files:
                out.write(path, path.relative_to(tree).as_posix())

    return write


@dataclass(frozen=True)
class Declared:
    """What every sample member of an archive declares, read from its headers with zipfile and struct."""

    encryption: str | None  # "zipcrypto", "AE-1", "AE-2"
    key_bits: int | None  # AES only
    method: int  # of the plaintext (inside AES)
    descriptor: bool  # flag bit 3: CRC-32 and sizes (also) after the data
    local_sizes: bool = True  # the local header holds the compressed size (False: written streamed)


FORMATS: dict[str, tuple[Callable[[Path, Path, list[str]], None], Declared]] = {
    # ZipCrypto: Info-ZIP sets bit 3 on every encrypted member (its check byte is the time's),
    # to a file with sizes in the local header too, to a pipe with none; 7-Zip sets no bit 3.
    "info-zip/zipcrypto/deflate": (_info_zip("-P", PASSWORD), Declared("zipcrypto", None, DEFLATED, True)),
    "info-zip/zipcrypto/stored": (_info_zip("-0", "-P", PASSWORD), Declared("zipcrypto", None, STORED, True)),
    "info-zip/zipcrypto/deflate/streamed": (
        _info_zip("-P", PASSWORD, streamed=True),
        Declared("zipcrypto", None, DEFLATED, True, local_sizes=False),
    ),
    "info-zip/zipcrypto/stored/streamed": (
        _info_zip("-0", "-P", PASSWORD, streamed=True),
        Declared("zipcrypto", None, STORED, True, local_sizes=False),
    ),
    "7-zip/zipcrypto/deflate": (_seven_zip("Deflate", "ZipCrypto"), Declared("zipcrypto", None, DEFLATED, False)),
    "7-zip/zipcrypto/stored": (_seven_zip("Copy", "ZipCrypto"), Declared("zipcrypto", None, STORED, False)),
    # WinZip AES: 7-Zip writes AE-2 (no CRC-32), pyzipper AE-1 when told.
    **{
        f"7-zip/aes{bits}/{name}": (_seven_zip(method, f"AES{bits}"), Declared("AE-2", bits, number, False))
        for bits in (128, 192, 256)
        for name, method, number in (("deflate", "Deflate", DEFLATED), ("stored", "Copy", STORED))
    },
    **{
        f"pyzipper/ae1-{bits}/{name}": (_pyzipper(1, bits, number), Declared("AE-1", bits, number, False))
        for bits in (128, 192, 256)
        for name, number in (("deflate", DEFLATED), ("stored", STORED))
    },
    "pyzipper/ae2-192/deflate": (_pyzipper(2, 192, DEFLATED), Declared("AE-2", 192, DEFLATED, False)),
    # Deflate64, bzip2 and LZMA, plain and inside either encryption.
    **{
        f"7-zip/{(encryption or 'plain').lower()}/{method.lower()}": (
            _seven_zip(method, encryption),
            Declared(
                {None: None, "ZipCrypto": "zipcrypto", "AES256": "AE-2"}[encryption],
                256 if encryption == "AES256" else None,
                number,
                False,
            ),
        )
        for method, number in (("Deflate64", DEFLATE64), ("BZip2", BZIP2), ("LZMA", LZMA))
        for encryption in (None, "ZipCrypto", "AES256")
    },
}


def _aes_field(extra: bytes) -> tuple[int, int, int] | None:
    """(version, key bits, method) of a 0x9901 extra field record (WinZip's AE-x spec), or None."""
    while len(extra) >= 4:
        kind, length = struct.unpack_from("<HH", extra)
        if kind == AES_EXTRA_ID:
            version, _vendor, strength, method = struct.unpack_from("<H2sBH", extra, 4)
            return version, {1: 128, 2: 192, 3: 256}[strength], method
        extra = extra[4 + length :]
    return None


def _declared(archive: Path, info: zipfile.ZipInfo) -> Declared:
    aes = _aes_field(info.extra)
    if aes:
        encryption, bits, method = f"AE-{aes[0]}", aes[1], aes[2]
    else:
        encryption, bits, method = ("zipcrypto" if info.flag_bits & 1 else None), None, info.compress_type
    with archive.open("rb") as file:
        file.seek(info.header_offset + LOCAL["compress_size"])
        (local_size,) = struct.unpack("<L", file.read(4))
    return Declared(encryption, bits, method, bool(info.flag_bits & 0x08), local_size == info.compress_size)


def _sample_members(archive: Path) -> list[zipfile.ZipInfo]:
    with zipfile.ZipFile(archive) as opened:
        return [info for info in opened.infolist() if not info.is_dir()]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """The extracted tree every archive is made of: ``Train/p1/aug{1,2,3}.pt``."""
    root = tmp_path_factory.mktemp("tree")
    for name, data in tiny_members().items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


@pytest.fixture(scope="module")
def archive_of(tree, tmp_path_factory) -> Callable[..., Path]:
    """``archive_of(format, names=(ROOT,))``: that archive of ``tree``, written once per module. Read-only."""
    made: dict[tuple[str, tuple[str, ...]], Path] = {}
    folder = tmp_path_factory.mktemp("archives")

    def make(name: str, names: tuple[str, ...] = (ROOT,)) -> Path:
        if (name, names) not in made:
            path = folder / f"{len(made)}-{name.replace('/', '-')}.zip"
            FORMATS[name][0](tree, path, list(names))
            made[name, names] = path
        return made[name, names]

    return make


@pytest.fixture
def copy_of(archive_of, tmp_path) -> Callable[..., Path]:
    """``copy_of(format)``: a copy of that archive in ``tmp_path``, to damage."""

    def copy(name: str, names: tuple[str, ...] = (ROOT,)) -> Path:
        return Path(shutil.copy(archive_of(name, names), tmp_path / "a.zip"))

    return copy


def _right() -> Passwords:
    return Passwords.for_all(PASSWORD)


def _cases(*rows: tuple[str, ...]) -> list:
    """Parameters named by all but their last value (the expected reason)."""
    return [pytest.param(*row, id="-".join(row[:-1])) for row in rows]


# ------------------------------------------------------------------------------------------
# Every format reads bit for bit
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_member_reads_as_the_plain_file(name, archive_of, tree):
    archive = archive_of(name)
    infos = _sample_members(archive)
    assert sorted(info.filename for info in infos) == MEMBERS
    for info in infos:  # the writer wrote what this case is about
        assert _declared(archive, info) == FORMATS[name][1], info.filename
    with SourceReader(str(archive), Password(PASSWORD)) as reader:
        for member in MEMBERS:
            assert reader.read_bytes(member) == (tree / member).read_bytes(), member
        sample = reader.read_sample(VICTIM)
    with SourceReader(str(tree)) as plain:
        expected = plain.read_sample(VICTIM)
    assert sample.keys() == expected.keys()
    for field, value in expected.items():
        assert_bit_exact(sample[field], value, field)
    if FORMATS[name][1].encryption:
        check_passwords([str(archive)], _right())  # planning accepts the right password


def test_a_partly_encrypted_archive_reads_each_member_as_it_is(tree, tmp_path):
    """Info-ZIP appends an unencrypted member to an encrypted archive: the password opens all, and
    without it the unencrypted member still reads while the encrypted ones say what is missing."""
    archive = tmp_path / "mixed.zip"
    encrypted, unencrypted = [MEMBERS[0], MEMBERS[2]], MEMBERS[1]
    subprocess.run(["zip", "-q", "-P", PASSWORD, str(archive), *encrypted], cwd=tree, check=True)
    subprocess.run(["zip", "-q", str(archive), unencrypted], cwd=tree, check=True)
    flags = {info.filename: info.flag_bits & 1 for info in _sample_members(archive)}
    assert flags == {MEMBERS[0]: 1, MEMBERS[1]: 0, MEMBERS[2]: 1}
    with SourceReader(str(archive), Password(PASSWORD)) as reader:
        for member in MEMBERS:
            assert reader.read_bytes(member) == (tree / member).read_bytes(), member
    with SourceReader(str(archive)) as reader:
        assert reader.read_bytes(unencrypted) == (tree / unencrypted).read_bytes()
        for member in encrypted:
            message = rf"^{re.escape(str(archive))}: {re.escape(member)}: is encrypted, and no password was given"
            with pytest.raises(PasswordError, match=message):
                reader.read_bytes(member)
    assert is_encrypted(str(archive))
    check_passwords([str(archive)], _right())
    with pytest.raises(PasswordError, match=rf"^{re.escape(str(archive))}: is encrypted, and no password was given"):
        check_passwords([str(archive)], NO_PASSWORDS)


# ------------------------------------------------------------------------------------------
# Wrong and missing passwords: refused before any work, naming the archive
# ------------------------------------------------------------------------------------------


def _header_accepts(archive: Path, member: str, password: bytes) -> bool:
    """Whether an independent reader (pyzipper) lets ``password`` past ``member``'s password check:
    ZipCrypto's check byte or AES's verifier (the data may still prove it wrong)."""
    with pyzipper.AESZipFile(archive) as opened:
        try:
            opened.open(member, pwd=password).close()
        except RuntimeError:  # "Bad password for file"
            return False
    return True


def _zipcrypto_header(archive: Path, info: zipfile.ZipInfo) -> tuple[bytes, int]:
    """A ZipCrypto member's 12-byte encryption header and the byte its last byte must decrypt to
    (APPNOTE 6.1.6: the CRC-32's high byte, or the local header's time's with flag bit 3)."""
    start, _ = data_span(archive, info.filename)
    data = archive.read_bytes()
    check = data[info.header_offset + 11] if info.flag_bits & 0x08 else info.CRC >> 24
    return data[start : start + 12], check


def _passes_check_byte(password: bytes, header: tuple[bytes, int]) -> bool:
    encrypted, check = header
    return _zipdecrypter.StandardZipDecrypter(password).decrypt_bytes(encrypted)[-1] == check


def _wrong_password(archive: Path, passing: int = 0) -> bytes:
    """The first ``b"wrong-N"`` that passes the ZipCrypto check byte of exactly the first ``passing``
    members of ``archive`` (0: one refused by the first member's check byte or AES verifier)."""
    infos = _sample_members(archive)
    if passing == 0:
        candidates = (b"wrong-%d" % number for number in range(100))
        return next(p for p in candidates if not _header_accepts(archive, infos[0].filename, p))
    headers = [_zipcrypto_header(archive, info) for info in infos[: passing + 1]]
    wanted = [True] * passing + [False] * (len(headers) - passing)
    for number in range(5_000_000):  # about 256**passing tries, well under a second for 2
        candidate = b"wrong-%d" % number
        if [_passes_check_byte(candidate, header) for header in headers] == wanted:
            assert all(_header_accepts(archive, info.filename, candidate) for info in infos[:passing])
            return candidate
    raise AssertionError(f"no password passes the check bytes of {passing} members")


@pytest.mark.parametrize(
    ("name", "reason"),
    _cases(
        ("info-zip/zipcrypto/deflate", "its encryption header does not match the password"),
        ("7-zip/zipcrypto/stored", "its encryption header does not match the password"),
        ("7-zip/aes256/deflate", "its AES password verifier does not match the password"),
        ("pyzipper/ae1-128/stored", "its AES password verifier does not match the password"),
    ),
)
def test_a_wrong_password_is_refused_naming_the_archive(name, reason, archive_of):
    archive = archive_of(name)
    first = _sample_members(archive)[0].filename
    wrong = _wrong_password(archive)
    expected = (
        rf"^{re.escape(str(archive))}: the password given does not open it \(tried on {re.escape(first)}: {reason}\)$"
    )
    with pytest.raises(PasswordError, match=expected) as raised:
        check_passwords([str(archive)], Passwords.for_all(wrong))
    assert raised.value.archive == str(archive) and raised.value.member is None
    assert wrong.decode() not in str(raised.value)
    with SourceReader(str(archive), Password(wrong)) as reader:  # while converting: the member, refused
        with pytest.raises(PasswordError, match=rf"^{re.escape(str(archive))}: {re.escape(first)}: {reason}$"):
            reader.read_bytes(first)


@pytest.mark.parametrize("name", ["info-zip/zipcrypto/stored/streamed", "7-zip/zipcrypto/deflate"])
@pytest.mark.parametrize("members", ["one member", "three members"])
def test_a_wrong_password_past_the_check_byte_is_still_refused(name, members, archive_of):
    """1 wrong password in 256 passes ZipCrypto's check byte: only the whole member (its CRC-32, or
    its deflate stream) shows it. With three members, the wrong password here passes the check byte
    of the first two, fails their data (which decides nothing: they could be damaged), and the third
    member's check byte refuses it. With one member, nothing tells a wrong password from a damaged
    member: the refusal says both."""
    archive = archive_of(name, (MEMBERS[0],) if members == "one member" else (ROOT,))
    infos = _sample_members(archive)
    wrong = _wrong_password(archive, passing=min(2, len(infos)))
    first = infos[0].filename
    reason = "CRC-32 mismatch: the member is corrupt" if "stored" in name else BAD_PLAINTEXT
    with SourceReader(str(archive), Password(wrong)) as reader:
        with pytest.raises(SourceError, match=rf"^{re.escape(str(archive))}: {re.escape(first)}: {reason}") as raised:
            reader.read_bytes(first)
    assert not isinstance(raised.value, PasswordError), "the check byte passed: the data refused it"
    opening = try_password(str(archive), Password(wrong))
    assert not opening.opens
    where = re.escape(str(archive))
    if members == "one member":
        assert not opening.refused and opening.member == first
        expected = rf"^{where}: the password given passes .* opens none .* \(the first, {re.escape(first)}: {reason}"
    else:
        third = infos[2].filename
        assert opening.refused and opening.member == third
        expected = rf"^{where}: the password given does not open it \(tried on {re.escape(third)}: its encryption"
    with pytest.raises(PasswordError, match=expected):
        check_passwords([str(archive)], Passwords.for_all(wrong))


def test_an_empty_first_member_does_not_prove_a_wrong_password(tree, tmp_path):
    """An empty ZipCrypto member has CRC-32 0: whatever passes its check byte "decrypts" it right.
    Planning must prove the password on members with data."""
    shutil.copytree(tree, tmp_path / "tree")
    empty = "Train/p1/aug0.pt"
    (tmp_path / "tree" / empty).write_bytes(b"")
    archive = tmp_path / "a.zip"
    subprocess.run(["zip", "-q", "-P", PASSWORD, str(archive), empty, *MEMBERS], cwd=tmp_path / "tree", check=True)
    assert [info.filename for info in _sample_members(archive)] == [empty, *MEMBERS]
    wrong = _wrong_password(archive, passing=1)  # past the empty member's check byte, not the next one's
    assert not try_password(str(archive), Password(wrong)).opens
    with pytest.raises(PasswordError, match=rf"^{re.escape(str(archive))}: the password given does not open it"):
        check_passwords([str(archive)], Passwords.for_all(wrong))
    assert try_password(str(archive), Password(PASSWORD)).member == MEMBERS[0]


@pytest.mark.parametrize("name", ["info-zip/zipcrypto/deflate", "7-zip/aes128/stored"])
def test_a_missing_password_says_how_to_give_one(name, archive_of):
    archive = str(archive_of(name))
    how = r"give it with --password-file FILE or the SSMSPINE_ZIP_PASSWORD variable, or run in a terminal"
    for passwords in (NO_PASSWORDS, Passwords(by_name={"SSMSpine_Test.zip": Password("another archive's")})):
        with pytest.raises(
            PasswordError, match=rf"^{re.escape(archive)}: is encrypted, and no password was given for it: {how}"
        ):
            check_passwords([archive], passwords)
    with SourceReader(archive) as reader:
        with pytest.raises(
            PasswordError, match=rf"^{re.escape(archive)}: {re.escape(VICTIM)}: is encrypted, and no password"
        ):
            reader.read_bytes(VICTIM)


# ------------------------------------------------------------------------------------------
# Damaged ciphertext: the member is bad, the password is not
# ------------------------------------------------------------------------------------------


def _flip_middle(archive: Path, member: str) -> None:
    start, length = data_span(archive, member)
    data = bytearray(archive.read_bytes())
    data[start + length // 2] ^= 0x5A
    archive.write_bytes(bytes(data))


def _shrink(archive: Path, member: str, cut: int) -> None:
    """Declare ``cut`` fewer compressed bytes in both headers: consistent, the data's end is gone."""
    _, length = data_span(archive, member)
    patch(archive, member, "both", compress_size=length - cut)


def _damage(archive: Path, member: str, how: str) -> None:
    if how == "flipped":
        _flip_middle(archive, member)
    elif how == "shrunk":
        _shrink(archive, member, 100)
    else:  # "cut": the zip loses 100 bytes inside the member, the directory keeps its sizes
        cut_member_data(archive, member, 100)


def _assert_member_refused(archive: Path, member: str, reason: str) -> None:
    with SourceReader(str(archive), Password(PASSWORD)) as reader:
        with pytest.raises(SourceError, match=rf"^{re.escape(str(archive))}: {re.escape(member)}: {reason}") as raised:
            reader.read_bytes(member)
        assert not isinstance(raised.value, PasswordError), "damaged data taken for a wrong password"
        expected = tiny_members()
        for other in MEMBERS:
            if other != member:
                assert reader.read_bytes(other) == expected[other], other


@pytest.mark.parametrize(
    ("name", "reason"),
    _cases(
        ("7-zip/aes256/deflate", AES_MAC),
        ("7-zip/aes128/stored", AES_MAC),  # AE-2 stored: nothing but the HMAC can tell
        ("pyzipper/ae1-192/deflate", AES_MAC),
        ("7-zip/aes256/deflate64", AES_MAC),
        ("7-zip/zipcrypto/deflate", BAD_PLAINTEXT),
        ("info-zip/zipcrypto/stored/streamed", "CRC-32 mismatch: the member is corrupt"),
        ("7-zip/zipcrypto/stored", "CRC-32 mismatch: the member is corrupt"),
        ("7-zip/zipcrypto/deflate64", BAD_PLAINTEXT),
        ("7-zip/zipcrypto/bzip2", BAD_PLAINTEXT),
        ("7-zip/zipcrypto/lzma", BAD_PLAINTEXT),
    ),
)
def test_altered_ciphertext_is_a_bad_member(name, reason, copy_of):
    archive = copy_of(name)
    _flip_middle(archive, VICTIM)
    _assert_member_refused(archive, VICTIM, reason)


@pytest.mark.parametrize(
    ("name", "how", "reason"),
    _cases(
        ("7-zip/aes256/deflate", "shrunk", AES_MAC),
        ("7-zip/aes192/stored", "shrunk", AES_MAC),
        ("pyzipper/ae1-256/stored", "cut", AES_MAC),
        ("7-zip/aes128/deflate", "cut", AES_MAC),
        ("7-zip/zipcrypto/deflate", "shrunk", "its deflate stream is cut short"),
        ("7-zip/zipcrypto/stored", "shrunk", "is stored, yet its size 6445 differs from its stored size 6345"),
        ("7-zip/zipcrypto/deflate", "cut", BAD_PLAINTEXT),
        ("info-zip/zipcrypto/deflate/streamed", "cut", BAD_PLAINTEXT),
    ),
)
def test_truncated_ciphertext_is_a_bad_member(name, how, reason, copy_of):
    archive = copy_of(name)
    _damage(archive, VICTIM, how)
    _assert_member_refused(archive, VICTIM, reason)


@pytest.mark.parametrize(
    ("name", "reason"),
    _cases(
        ("7-zip/aes256/stored", r"is too short for its AES salt, verifier and authentication code \(truncated\)"),
        ("7-zip/zipcrypto/deflate", r"is too short for its encryption header \(truncated\)"),
    ),
)
def test_ciphertext_shorter_than_its_header_is_a_bad_member(name, reason, copy_of):
    archive = copy_of(name)
    patch(archive, VICTIM, "both", compress_size=10)
    _assert_member_refused(archive, VICTIM, reason)


@pytest.mark.parametrize("how", ["flipped", "shrunk", "cut"])
@pytest.mark.parametrize("name", ["7-zip/aes256/deflate", "7-zip/zipcrypto/deflate", "info-zip/zipcrypto/stored"])
def test_a_damaged_first_member_is_not_taken_for_a_wrong_password(name, how, copy_of):
    """Planning tries up to three members: the right password opens the second when the first is damaged."""
    archive = copy_of(name)
    first, second = (info.filename for info in _sample_members(archive)[:2])
    _damage(archive, first, how)
    with SourceReader(str(archive), Password(PASSWORD)) as reader:
        with pytest.raises(SourceError) as raised:
            reader.read_bytes(first)
    assert not isinstance(raised.value, PasswordError)
    opening = try_password(str(archive), Password(PASSWORD))
    assert opening.opens and opening.member == second
    check_passwords([str(archive)], _right())


def test_a_streamed_zipcrypto_member_is_checked_against_its_local_headers_time(copy_of):
    """With a data descriptor, the check byte is the modification time's high byte, and Info-ZIP's
    ``unzip`` takes the time from the local header: a central directory whose time differs (only
    there) still opens with the right password."""
    archive = copy_of("info-zip/zipcrypto/stored/streamed")
    first = _sample_members(archive)[0]
    assert first.flag_bits & 0x08, "the member has a data descriptor"
    data = bytearray(archive.read_bytes())
    central = central_entry(bytes(data), first.filename)
    time_field = central + 12  # the central entry's last modification time
    struct.pack_into("<H", data, time_field, struct.unpack_from("<H", data, time_field)[0] ^ 0x4000)
    archive.write_bytes(bytes(data))
    with SourceReader(str(archive), Password(PASSWORD)) as reader:
        assert len(reader.read_bytes(first.filename)) == first.file_size


@pytest.mark.parametrize("name", ["7-zip/aes256/deflate", "info-zip/zipcrypto/stored"])
def test_damaged_members_before_one_intact_do_not_refuse_the_right_password(name, copy_of):
    """Every member but the last damaged: their password checks pass, their data fails, which decides
    nothing; the last one proves the password. With all of them damaged, the refusal says both causes."""
    archive = copy_of(name)
    names = [info.filename for info in _sample_members(archive)]
    for member in names[:-1]:
        _damage(archive, member, "flipped")
    opening = try_password(str(archive), Password(PASSWORD))
    assert opening.opens and opening.member == names[-1]
    check_passwords([str(archive)], _right())
    _damage(archive, names[-1], "flipped")
    with pytest.raises(PasswordError, match="passes the checks of its encrypted members but opens none"):
        check_passwords([str(archive)], _right())


# ------------------------------------------------------------------------------------------
# Deflate64: a damaged stream is a bad member
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("how", "reason"),
    _cases(
        ("invalid", r"its compressed data is not a valid Deflate64 stream \("),
        ("shrunk", "its Deflate64 stream is cut short: the compressed data ends after"),
        *[(f"at {where}", BAD_PLAINTEXT) for where in (0.0, 0.1, 0.3, 0.5, 0.9, 0.99)],
    ),
)
def test_a_damaged_deflate64_stream_is_a_bad_member(how, reason, copy_of):
    archive = copy_of("7-zip/plain/deflate64")
    start, length = data_span(archive, VICTIM)
    data = bytearray(archive.read_bytes())
    if how == "invalid":
        data[start : start + length] = b"\xff" * length  # block type 3: reserved
    elif how.startswith("at "):
        data[start + int(float(how[3:]) * length)] ^= 0x5A
    archive.write_bytes(bytes(data))
    if how == "shrunk":
        _shrink(archive, VICTIM, 50)
    _assert_member_refused(archive, VICTIM, reason)


def test_a_bomb_in_lzma_or_deflate64_stops_at_the_declared_size(tmp_path):
    """A member that declares 1,000 bytes but inflates to 32 MiB of zeros: refused, and LZMA (bounded by
    ``max_length``) never holds more than a little of it; Deflate64 (fed 4 KiB at a time) stops at the
    first step past the declared size."""
    import lzma
    import tracemalloc

    from pipeline.source.zip_methods import DEFLATE64, LZMA, DecompressionError, decompress

    zeros = bytes(32 << 20)
    lzma1 = {"id": lzma.FILTER_LZMA1, "dict_size": 1 << 20, "lc": 3, "lp": 0, "pb": 2}
    properties = bytes([(2 * 5 + 0) * 9 + 3]) + (1 << 20).to_bytes(4, "little")  # (pb * 5 + lp) * 9 + lc, dict size
    stream = lzma.compress(zeros, format=lzma.FORMAT_RAW, filters=[lzma1])
    lzma_member = bytes([9, 20]) + len(properties).to_bytes(2, "little") + properties + stream
    tracemalloc.start()
    with pytest.raises(DecompressionError, match="inflates to more than the 1000 bytes"):
        decompress(LZMA, lzma_member, 1000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 << 20, f"LZMA held {peak} bytes for a 1,000-byte member"

    (tmp_path / "zeros").write_bytes(zeros)
    subprocess.run(["7z", "a", "-tzip", "-bd", "-bso0", "-mm=Deflate64", "bomb.zip", "zeros"], cwd=tmp_path, check=True)
    with zipfile.ZipFile(tmp_path / "bomb.zip") as archive:
        info = archive.getinfo("zeros")
    data = (tmp_path / "bomb.zip").read_bytes()
    start = info.header_offset + 30 + int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little")
    start += int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
    with pytest.raises(DecompressionError, match="inflates to more than the 1000 bytes"):
        decompress(DEFLATE64, data[start : start + info.compress_size], 1000)


def test_checking_a_password_at_a_url_opens_the_archive_once(archive_of, serve):
    """The password check reads the directory once (one size request, one tail) and then members."""
    archive = archive_of("7-zip/aes256/deflate")
    server = serve(archive.parent)
    check_passwords([server.url + archive.name], _right())
    assert len([r for r in server.requests if r.method == "HEAD"]) == 1
