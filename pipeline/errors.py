"""The errors this package raises on purpose, one type per kind; the CLI turns each into one line and exit code 2.

Every message names what is wrong: the archive and member of a source, or the shard, array, key or
field of an output, and the reason.
"""

from __future__ import annotations

from pipeline.urls import safe_url


class SSMSpineError(Exception):
    """Base class of every error this package raises on purpose."""


class SourceError(SSMSpineError):
    """A source archive or one of its members cannot be read safely.

    The message always names the archive and, where there is one, the member. An archive at a URL
    is named without the credentials the URL may carry (:func:`pipeline.urls.safe_url`), as the
    error ends up in messages, logs and ``rejected.json``.
    """

    def __init__(self, archive: str, member: str | None, reason: str) -> None:
        self.archive = safe_url(archive)
        self.member = member
        self.reason = reason
        where = f"{self.archive}: {member}" if member else self.archive
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):  # errors raised in Dask workers travel back to the client pickled
        return type(self), (self.archive, self.member, self.reason)


class PasswordError(SourceError):
    """An encrypted archive (or member) has no password, or the one given does not open it.

    The message names the archive and how to give a password; it never holds the password.
    """


class SchemaError(SourceError):
    """A sample decoded fine but does not match the schema of the rest of the data."""


class OutputError(SSMSpineError):
    """The output directory, a shard or the manifest is missing, corrupt or inconsistent."""


class NotFoundError(OutputError, LookupError):
    """An output has no such split, field, sample key or index; the message names it and what there is.

    Every reader and command raises this one type (or a subclass) for the same mistake.
    """


class SampleIndexError(NotFoundError, IndexError):
    """A sample index out of range: an ``IndexError`` too, which ends iteration over a map-style dataset."""


class SampleKeyError(NotFoundError, KeyError):
    """No sample of that key (or patient and shape): a ``KeyError`` too, as a mapping's lookup raises."""

    def __str__(self) -> str:  # KeyError would show the message quoted, as a key
        return str(self.args[0]) if self.args else ""


class UnavailableError(SSMSpineError):
    """A URL kept failing with errors that usually pass (HTTP 503, a dropped connection, a timeout).

    Raised after the bounded retries of :mod:`pipeline.retry`, naming the URL, the attempts and the
    last reason. It says nothing about the data, so ``--skip-bad`` never rejects a member for it:
    the run stops, and running it again later resumes.
    """


class UsageError(SSMSpineError, ValueError):
    """The API was used in a way it cannot work (the message says how to use it instead).

    Every misuse raises it: a bad argument, an option that cannot be combined with another, a state
    of another dataset. It is a ``ValueError``, as Python's own bad arguments are.
    """
