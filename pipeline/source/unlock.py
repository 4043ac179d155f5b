"""Which sources are encrypted, and whether the password given opens each: found before any work is done.

A wrong password must not become thousands of rejected members, twenty-five gigabytes later. So
planning decrypts whole members of every encrypted archive with its password: ZipCrypto's check
byte lets 1 wrong password in 256 through, and only a member's CRC-32 proves it; AES has a password
verifier (1 in 65,536) and an authentication code. Members are tried in order until one of them
decides, up to :data:`TRIED_MEMBERS`:

* one that decrypts, decompresses and matches its CRC-32 (or HMAC) proves the password;
* one whose check refuses the password (check byte, verifier) disproves it: wrong password;
* one that passes the check and then fails (its data, CRC or HMAC) decides nothing: it is damaged,
  or (1 in 256, ZipCrypto) the password is wrong; the next is tried, so that damaged members, which
  ``--skip-bad`` rejects later, are not taken for a wrong password.

If none decides, the password passed every check yet opened nothing: one line says so, naming the
first member tried, since a conversion could only reject them all.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from pipeline.errors import PasswordError, SourceError
from pipeline.source.members import is_junk, open_zip
from pipeline.source.passwords import PASSWORD_VARIABLE, Password, Passwords
from pipeline.source.zip_local import MASK_ENCRYPTED
from pipeline.source.zip_reader import SourceReader
from pipeline.urls import is_url

#: Encrypted members tried at most before a password that opens none of them is refused.
TRIED_MEMBERS = 20
#: How to give a password, for the message of an encrypted source that has none.
HOW_TO_GIVE = (
    f"give it with --password-file FILE or the {PASSWORD_VARIABLE} variable, or run in a terminal to be asked "
    "(passwords= in Python)"
)


@dataclass(frozen=True)
class Opening:
    """Whether a password opens an archive, and on which member that was found."""

    opens: bool
    member: str
    reason: str | None = None  # why not, when it does not
    refused: bool = False  # a password check said no (rather than damage after the checks passed)


def encrypted_members(infos: Iterable[zipfile.ZipInfo]) -> list[zipfile.ZipInfo]:
    """The encrypted sample members among directory entries, in directory order."""
    return [i for i in infos if i.flag_bits & MASK_ENCRYPTED and not i.is_dir() and not is_junk(i.filename)]


def is_encrypted(source: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """True for a zip with any encrypted sample member (reads the central directory only)."""
    if _is_tree(source):
        return False
    with open_zip(source, storage_options=storage_options) as archive:
        return bool(encrypted_members(archive.infolist()))


def try_password(source: str, password: Password, storage_options: Mapping[str, Any] | None = None) -> Opening:
    """Whether ``password`` opens ``source``: decrypt up to :data:`TRIED_MEMBERS` whole members."""
    with SourceReader(source, password, storage_options) as reader:
        return _opening(reader, encrypted_members(reader.infolist()))


def _opening(reader: SourceReader, members: list[zipfile.ZipInfo]) -> Opening:
    """Whether the reader's password opens some of ``members``, tried until one decides (see above)."""
    # empty members last: any password past ZipCrypto's check byte "opens" one (its CRC-32 is 0)
    candidates = [info.filename for info in sorted(members, key=lambda info: info.file_size == 0)[:TRIED_MEMBERS]]
    undecided: list[SourceError] = []
    for member in candidates:
        try:
            reader.read_bytes(member)
        except PasswordError as refusal:  # the password's own check said no
            return Opening(opens=False, member=member, reason=refusal.reason, refused=True)
        except SourceError as error:  # damaged (or ZipCrypto's 1 in 256): the next one decides
            undecided.append(error)
            continue
        return Opening(opens=True, member=member)
    first = undecided[0]
    return Opening(opens=False, member=first.member or "", reason=first.reason)


def check_passwords(sources: list[str], passwords: Passwords, storage_options: Mapping[str, Any] | None = None) -> None:
    """Raise :class:`PasswordError` for the first encrypted source without a password, or whose
    password does not open it. Each zip is opened once (its central directory: two or three
    requests at a URL), and a few of its members are read."""
    for source in sources:
        if _is_tree(source):
            continue
        password = passwords.for_archive(source)
        with SourceReader(source, password, storage_options) as reader:
            members = encrypted_members(reader.infolist())
            if not members:
                continue
            if password is None:
                raise PasswordError(source, None, f"is encrypted, and no password was given for it: {HOW_TO_GIVE}")
            opening = _opening(reader, members)
        if opening.refused:
            tried = f"tried on {opening.member}: {opening.reason}"
            raise PasswordError(source, None, f"the password given does not open it ({tried})")
        if not opening.opens:
            reason = (
                "the password given passes the checks of its encrypted members but opens none of them: it is "
                f"wrong, or they are damaged (the first, {opening.member}: {opening.reason})"
            )
            raise PasswordError(source, None, reason)


def _is_tree(source: str) -> bool:
    """True for an extracted tree (never encrypted); a local source that is not there is named as such."""
    if is_url(source):
        return False
    if not os.path.exists(source):
        raise SourceError(source, None, "no such file or directory")
    return os.path.isdir(source)


def locked_sources(
    sources: list[str], passwords: Passwords, storage_options: Mapping[str, Any] | None = None
) -> list[str]:
    """The encrypted sources that ``passwords`` has no password for (those a terminal may ask for).

    A source that cannot be opened is not among them: the command itself names it.
    """
    return [s for s in sources if passwords.for_archive(s) is None and _is_locked(s, storage_options)]


def _is_locked(source: str, storage_options: Mapping[str, Any] | None) -> bool:
    try:
        return is_encrypted(source, storage_options)
    except SourceError:
        return False
