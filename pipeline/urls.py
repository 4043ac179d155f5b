"""Telling URLs from local paths, and naming a URL without the secrets it may carry.

Sources and outputs may live at URLs (``s3://bucket/SSMSpine_Train.zip``, ``https://host/out``).
A URL can carry credentials: a password in its user part, or a signature in its query string (a
presigned URL). Messages, logs, ``rejected.json`` and the manifest name a URL only through
:func:`safe_url`, so none of that is ever written anywhere.
"""

from __future__ import annotations

import os
import re
import urllib.parse

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(location: str) -> bool:
    """True for ``scheme://...``; anything else is a local path."""
    return bool(_URL.match(location))


def scheme(url: str) -> str:
    """The lower-cased scheme of a URL (``s3``, ``https``)."""
    return url.split("://", 1)[0].lower()


def safe_url(location: str) -> str:
    """``location`` fit to be printed or recorded: a URL without password, query and fragment.

    The user name stays (it says whose access was used); the password, a presigned URL's signature
    and anything else after ``?`` go. A local path is returned unchanged.
    """
    if not is_url(location):
        return location
    parts = urllib.parse.urlsplit(location)
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}@{host}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def location_name(location: str) -> str:
    """The file name of a source: the last part of a local path, or of a URL's path."""
    if is_url(location):
        parts = urllib.parse.urlsplit(location)
        return parts.path.rstrip("/").rpartition("/")[2] or parts.netloc
    return os.path.basename(os.path.normpath(location))
