"""Zip passwords: which one opens which archive, held so that none is ever printed, logged or recorded.

The complete release is password-protected (the authors send the password by e-mail), and Train
and Test may have different ones. A password comes from a file (``--password-file``), from the
environment (``SSMSPINE_ZIP_PASSWORD``), or from a prompt without echo; never from a command-line
value, which ``ps`` and shell history would show.

:class:`Password` prints as ``Password(***)``: a task, an option record or an error that holds one
can be shown, logged or put in a Dask task's repr without giving it away. It travels to Dask
workers pickled, in the clear unless the cluster uses TLS (``docs/SAFETY.md``). Nothing derived from
it (a hash) is ever made either: the plan, the manifest and Dask's task keys never see it.

A password file holds either one line, the password of every archive, or lines
``NAME: PASSWORD`` giving the password of the archive whose file name is NAME
(``SSMSpine_Train.zip: ...``); ``*: PASSWORD`` gives the password of any other archive. Blank
lines and lines starting with ``#`` are skipped in the second form. Only the line ending is
stripped: spaces belong to the password.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Mapping, NoReturn

from pipeline.errors import UsageError
from pipeline.urls import location_name

#: The environment variable holding one password for every archive.
PASSWORD_VARIABLE = "SSMSPINE_ZIP_PASSWORD"
#: A line naming an archive's password: ``SSMSpine_Train.zip: secret`` or ``*: secret``.
_NAMED_LINE = re.compile(rb"^(?P<name>\*|[^\s:][^:]*\.zip): (?P<password>.*)$", re.IGNORECASE)


class Password:
    """A password's bytes, which never show in ``repr``, ``str`` or a message."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes | str) -> None:
        self._secret = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        if not self._secret:
            raise UsageError("an empty password opens nothing: give the archive's password")

    def reveal(self) -> bytes:
        """The bytes, for decryption only."""
        return self._secret

    def __repr__(self) -> str:
        return "Password(***)"

    __str__ = __repr__

    def __reduce__(self):  # to Dask workers: pickled as its bytes (use TLS across machines)
        return Password, (self._secret,)


@dataclass(frozen=True)
class Passwords:
    """The passwords of a run's archives: one per archive file name, and one for any other."""

    by_name: Mapping[str, Password] = field(default_factory=dict)
    default: Password | None = None

    @classmethod
    def for_all(cls, password: bytes | str | Password) -> "Passwords":
        """One password for every archive (a file's single line, the environment variable)."""
        return cls(default=password if isinstance(password, Password) else Password(password))

    def for_archive(self, archive: str) -> Password | None:
        """The password of ``archive`` (a path or URL), by its file name, else the default."""
        return self.by_name.get(location_name(archive), self.default)

    def merged_with(self, other: "Passwords") -> "Passwords":
        """These passwords, with ``other``'s for the archives these do not name (prompted ones)."""
        default = self.default if self.default is not None else other.default
        return Passwords(by_name={**other.by_name, **self.by_name}, default=default)

    def __bool__(self) -> bool:
        return bool(self.by_name) or self.default is not None


NO_PASSWORDS = Passwords()


def read_password_file(path: str | os.PathLike) -> Passwords:
    """The passwords in ``path`` (the format is in this module's docstring); errors never quote a line."""
    try:
        with open(path, "rb") as file:
            text = file.read()
    except OSError as exc:
        raise UsageError(f"password file {os.fspath(path)}: cannot be read ({exc.strerror or exc})") from None
    lines = [line[:-1] if line.endswith(b"\r") else line for line in text.split(b"\n")]
    while lines and lines[-1] == b"":  # blank lines at the end (an editor's, or a stray one) hold nothing
        lines.pop()
    content = [line for line in lines if line.strip() and not line.startswith(b"#")]
    if len(lines) == 1 and not _NAMED_LINE.match(lines[0]):
        return Passwords.for_all(lines[0]) if lines[0] else _empty(path)
    by_name: dict[str, Password] = {}
    default = None
    for number, line in enumerate(lines, start=1):
        if line not in content:
            continue
        match = _NAMED_LINE.match(line)
        if match is None:
            reason = "is neither the file's only line nor 'NAME.zip: PASSWORD' (nor '*: PASSWORD')"
            raise UsageError(f"password file {os.fspath(path)}: line {number} {reason}")
        name = match.group("name").decode("utf-8", errors="replace")
        if not match.group("password"):
            raise UsageError(f"password file {os.fspath(path)}: line {number} gives {name} an empty password")
        if name == "*":
            default = Password(match.group("password"))
        else:
            by_name[name] = Password(match.group("password"))
    if not by_name and default is None:
        return _empty(path)
    return Passwords(by_name=by_name, default=default)


def _empty(path: str | os.PathLike) -> NoReturn:
    raise UsageError(f"password file {os.fspath(path)}: holds no password")


def passwords_from_environment() -> Passwords:
    """The password of every archive from ``SSMSPINE_ZIP_PASSWORD``, or none."""
    value = os.environb.get(PASSWORD_VARIABLE.encode()) if os.supports_bytes_environ else None
    if value is None:
        value = os.environ.get(PASSWORD_VARIABLE, "").encode("utf-8")
    return Passwords.for_all(value) if value else NO_PASSWORDS
