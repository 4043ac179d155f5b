"""The one retry-and-error mapping of every remote operation: run it retried, and turn a lasting
failure into the caller's error.

Every read or write over the network (an output's files, its shards, a Zarr shard, a source archive
at a URL) is one operation on one named object. Transient failures are tried again
(:func:`pipeline.retry.retried`); a lasting one becomes one line in the user's terms
(:func:`pipeline.retry.refusal`: access denied, not found, no credentials, ...) inside the error its
caller chooses: an output's reads and writes raise :class:`~pipeline.errors.OutputError`, a source's
:class:`~pipeline.errors.SourceError`. Callers that know what a missing object means (a Zarr shard
never written, an output file not there yet) have ``FileNotFoundError`` passed to them instead.
The password, query and fragment of the URL are taken out of every reason: a query may hold a
presigned signature, and a library may repeat it without the URL around it.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Callable, TypeVar

from pipeline.errors import OutputError
from pipeline.retry import refusal, retried
from pipeline.urls import is_url

T = TypeVar("T")
#: What a lasting failure becomes: the caller's error, given the object's name and the reason as one line.
Failure = Callable[[str, str], Exception]


def output_error(name: str, reason: str) -> OutputError:
    """The failure of an output's objects: one line naming the object."""
    return OutputError(f"{name}: {reason}")


#: Query values this long or longer are taken out of messages on their own too (a signature, a
#: token); shorter ones (``versionId=3``) are left, as taking them out would garble every message.
SECRET_VALUE_CHARS = 6


def url_secrets(url: str) -> tuple[str, ...]:
    """The parts of ``url`` no message may repeat: its password, query (whole, and each long value)
    and fragment; the longest first, so that none is left half taken out."""
    if not is_url(url):
        return ()
    parts = urllib.parse.urlsplit(url)
    values = [v for _, v in urllib.parse.parse_qsl(parts.query) if len(v) >= SECRET_VALUE_CHARS]
    found = {s for s in (parts.password, parts.query, parts.fragment, *values) if s}
    return tuple(sorted(found, key=len, reverse=True))


@dataclass(frozen=True)
class RemoteCalls:
    """How one caller's remote operations fail: its error (``failure``), its words for a missing
    object (``missing``) and for any other lasting failure (``failed``), whether they read (a
    read may go anonymous where credentials are missing; a write cannot), whether a missing object
    passes to the caller as ``FileNotFoundError``, and the secrets to take out of its messages.

    Frozen and made of module-level functions, so it pickles with the :class:`~pipeline.storage.Storage`
    Dask tasks carry.
    """

    failure: Failure = output_error
    missing: str = "not found"
    failed: str = "cannot be read"
    reading: bool = True
    missing_passes: bool = False
    secrets: tuple[str, ...] = ()

    def run(self, name: str, operation: Callable[[], T], path: str = "", detail: str = "") -> T:
        """``operation()`` on the object ``name`` (``path`` in its file system, which a library's
        "not found" repeats), transient failures tried again; a lasting one is
        ``failure(name, why)``. ``detail`` (a byte range, say) is added to the name while retrying."""

        def failed(error: Exception) -> Exception:
            return self.failure(name, self.why(error, path))

        passes = (FileNotFoundError,) if self.missing_passes else ()
        return retried(f"{name}{detail}", operation, failed, passes=passes, redact=self.redact)

    def why(self, error: BaseException, path: str = "") -> str:
        """The reason a lasting failure gives, in the user's terms and without the secrets."""
        return self.redact(refusal(error, path, self.missing, self.failed, self.reading))

    def redact(self, text: str) -> str:
        """``text`` (a library's message) without the secrets of the URL."""
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text
