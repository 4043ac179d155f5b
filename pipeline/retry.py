"""Reads over the network, retried in one place: bounded attempts, exponential backoff, one clear error.

Object stores and web servers fail now and then in ways that pass: ``503 SlowDown``, a 500, a
connection a proxy dropped or reset, a timeout. Every ranged read of a source archive at a URL
and of a converted output at a URL goes through :func:`retrying`, which tries again after
0.25 s, 0.5 s, 1 s, ... and, when the attempts are spent, raises one
:class:`~pipeline.errors.UnavailableError` naming the URL and the last reason. Failures that will
not pass (not found, forbidden, no credentials, a malformed answer) are raised at once, unchanged,
for the caller to name.

The libraries underneath say "transient" in their own words: the standard library raises
``ConnectionError``/``TimeoutError``; fsspec's HTTP file system
raises aiohttp's errors (and turns a failed size query into ``FileNotFoundError`` *from* them);
s3fs turns botocore's ``ClientError`` into ``OSError`` *from* it after its own retries. So a
failure is transient when it, or an error it was raised from, is one of those. None of those
libraries is imported here: they are recognised by their class names and attributes.

Settings (read at every call, so tests and jobs can set them): ``SSMSPINE_RETRIES`` retries
after the first attempt (default 4), ``SSMSPINE_RETRY_DELAY`` seconds before the first retry
(default 0.25; it doubles each time, up to :data:`MAX_DELAY`).
"""

from __future__ import annotations

import logging
import os
import random
import re
import time
from typing import Callable, Iterator, TypeVar

from pipeline.errors import SSMSpineError, UnavailableError, UsageError
from pipeline.urls import safe_url

RETRIES_ENV = "SSMSPINE_RETRIES"
DELAY_ENV = "SSMSPINE_RETRY_DELAY"
DEFAULT_RETRIES = 4
DEFAULT_DELAY = 0.25
MAX_DELAY = 10.0

#: HTTP answers that say "try again": timeout, too many requests, server errors and overload.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
#: S3 error codes that say the same (botocore's ClientError carries them).
TRANSIENT_CODES = frozenset(
    {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling", "ThrottlingException"}
)
#: Exceptions of aiohttp (under fsspec's HTTP) and botocore (under s3fs) that mean the connection failed.
_TRANSIENT_NAMES = frozenset(
    {
        "ClientConnectionError",  # aiohttp: ServerDisconnectedError, ClientOSError, ...
        "ClientPayloadError",  # aiohttp: the body ended early
        "HTTPClientError",  # botocore: EndpointConnectionError, ConnectionClosedError, ReadTimeoutError, ...
        "IncompleteReadError",  # botocore
        "ResponseStreamingError",  # botocore
    }
)

#: A URL in a library's message: printed as :func:`~pipeline.urls.safe_url` prints it.
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")

T = TypeVar("T")
log = logging.getLogger(__name__)


class TransientError(Exception):
    """A failure its caller recognised as passing, such as an HTTP 503 answer to its own request."""


def _setting(name: str, default: float, kind: type) -> float:
    text = os.environ.get(name)
    if text is None or not text.strip():
        return default
    try:
        value = kind(text)
    except ValueError:
        value = -1
    if value < 0:
        raise UsageError(f"{name}={text!r}: not a {'whole ' if kind is int else ''}number of at least 0")
    return value


def retries() -> int:
    """How many times a failed read is tried again (``SSMSPINE_RETRIES``)."""
    return int(_setting(RETRIES_ENV, DEFAULT_RETRIES, int))


def first_delay() -> float:
    """Seconds before the first retry (``SSMSPINE_RETRY_DELAY``); each next one waits twice as long."""
    return float(_setting(DELAY_ENV, DEFAULT_DELAY, float))


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the errors it was raised from (``raise ... from``), innermost last."""
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__


def _names(error: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(error).__mro__}


def _is_transient_link(error: BaseException) -> bool:
    if isinstance(error, SSMSpineError):
        return False
    if isinstance(error, (TransientError, ConnectionError, TimeoutError)):
        return True
    if _names(error) & _TRANSIENT_NAMES:
        return True
    status, code = http_status(error), error_code(error)
    return status in TRANSIENT_STATUS or code in TRANSIENT_CODES


def is_transient(error: BaseException) -> bool:
    """Whether trying again may help: ``error`` or an error it was raised from is a passing one."""
    return not isinstance(error, SSMSpineError) and any(_is_transient_link(link) for link in _chain(error))


def http_status(error: BaseException) -> int | None:
    """The HTTP status an error of aiohttp (``.status``) or botocore (its response) carries, if any."""
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return status if isinstance(status, int) else None
    status = getattr(error, "status", None)
    return status if isinstance(status, int) and "ClientResponseError" in _names(error) else None


def error_code(error: BaseException) -> str | None:
    """The S3 error code (``SlowDown``, ``NoSuchKey``) a botocore ``ClientError`` carries, if any."""
    response = getattr(error, "response", None)
    return response.get("Error", {}).get("Code") if isinstance(response, dict) else None


def has_status(error: BaseException, *statuses: int) -> bool:
    """Whether ``error`` or an error it was raised from is an HTTP answer of one of ``statuses``."""
    return any(http_status(link) in statuses for link in _chain(error))


def has_name(error: BaseException, *names: str) -> bool:
    """Whether ``error`` or an error it was raised from is of a class so named (``NoCredentialsError``)."""
    return any(_names(link) & set(names) for link in _chain(error))


def reason(error: BaseException) -> str:
    """One line for what went wrong: the HTTP answer if there was one, else the innermost error.

    Passwords and query strings of URLs in a library's text are dropped: a query may hold a
    presigned signature.
    """
    links = list(_chain(error))
    for link in links:
        status = http_status(link)
        if status is not None:
            response = getattr(link, "response", None)
            if isinstance(response, dict):  # botocore: its code and message
                detail = ": ".join(filter(None, (response["Error"].get("Code"), response["Error"].get("Message"))))
            else:  # aiohttp: the reason phrase
                detail = str(getattr(link, "message", "") or "")
            return _scrub(f"HTTP {status} {detail}".strip())
    root = links[-1]
    detail = " ".join(str(root).split())
    if isinstance(root, TransientError):
        return _scrub(detail)
    return _scrub(f"{type(root).__name__}: {detail}" if detail else type(root).__name__)


#: What a lasting failure for want of credentials says: where this process looks for them.
NO_CREDENTIALS = "no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
#: ... and, for reading, the other way: a public bucket needs none.
OR_ANONYMOUS = ", or anonymous access in fsspec's configuration"


def refusal(
    error: BaseException, path: str = "", missing: str = "not found", failed: str = "failed", reading: bool = True
) -> str:
    """Why an object cannot be reached, in the user's terms, for a failure trying again does not
    cure: access denied, ``missing`` (with the detail, or "no such object" where the library's
    detail is just the object's ``path``), no credentials (with anonymous access as the other way
    when ``reading``), or else ``failed`` and the library's reason.

    fsspec's HTTP file system says ``FileNotFoundError`` for any failed size query, a 403 included
    (raised *from* the answer), so the HTTP status underneath decides first.
    """
    if isinstance(error, PermissionError) or has_status(error, 401, 403):
        return f"access denied ({reason(error)}); check the credentials this process finds"
    if has_status(error, 404, 410) or isinstance(error, FileNotFoundError) and error.__cause__ is None:
        detail = reason(error)
        return f"{missing} (no such object)" if path and path in detail else f"{missing} ({detail})"
    if has_name(error, "NoCredentialsError", "PartialCredentialsError"):
        return NO_CREDENTIALS + (OR_ANONYMOUS if reading else "")
    return f"{failed} ({reason(error)})"


def retried(
    what: str,
    operation: Callable[[], T],
    failure: Callable[[Exception], SSMSpineError],
    passes: tuple[type[Exception], ...] = (),
    redact: Callable[[str], str] = str,
) -> T:
    """``operation()`` through :func:`retrying`, its lasting failure raised as ``failure(error)``
    (usually a one-line error built from :func:`refusal`); our own errors, and those of the
    classes in ``passes`` (for callers that handle them), are raised as they are. ``redact`` takes
    the caller's secrets out of the reasons :func:`retrying` logs and raises."""
    try:
        return retrying(what, operation, redact)
    except (SSMSpineError, *passes):
        raise
    except Exception as exc:  # noqa: BLE001 - every library error becomes one line naming the object
        raise failure(exc) from exc


def _scrub(text: str) -> str:
    return _URL.sub(lambda url: safe_url(url.group(0)), text)[:300]


def retrying(what: str, read: Callable[[], T], redact: Callable[[str], str] = str) -> T:
    """``read()``, tried again with backoff while it fails transiently; ``what`` names the object,
    and ``redact`` takes secrets out of the library's reasons (beyond the URLs :func:`reason` hides).

    Raises :class:`~pipeline.errors.UnavailableError` once the retries are spent; any other
    failure at once, unchanged. ``read`` must be safe to repeat: a ranged read is.
    """
    allowed, delay = retries(), first_delay()
    for attempt in range(allowed + 1):
        try:
            return read()
        except Exception as exc:  # noqa: BLE001 - classified here; all but transient ones re-raised
            if not is_transient(exc):
                raise
            if attempt == allowed:
                raise UnavailableError(
                    f"{what}: still failing after {attempt + 1} attempt(s), last with {redact(reason(exc))} "
                    f"(the server or the network is failing; try again later, or set {RETRIES_ENV})"
                ) from exc
            wait = min(MAX_DELAY, delay * 2**attempt) * random.uniform(0.5, 1.0)  # jitter spreads out workers
            log.info("%s: %s; trying again in %.2f s", what, redact(reason(exc)), wait)
            time.sleep(wait)
    raise AssertionError("unreachable")
