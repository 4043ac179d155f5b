"""The fsspec file system of a URL: the one place a URL becomes a file system and a path in it.

Every remote read and write (an output's :class:`~pipeline.storage.Storage`, its shards, a source
archive at a URL) opens its file system here, so a URL fsspec cannot open is the same one-line
:class:`~pipeline.errors.UsageError` wherever it is given.
"""

from __future__ import annotations

from typing import Any, Mapping

from pipeline.errors import UsageError
from pipeline.urls import safe_url, scheme


def url_filesystem(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """The fsspec file system of ``url`` and the path in it. A URL fsspec cannot open is a
    :class:`~pipeline.errors.UsageError` naming it: an unknown scheme, a package the scheme needs
    (``s3fs`` for ``s3://``, ...) missing, a malformed URL."""
    import fsspec.core

    try:
        return fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    except ImportError as exc:
        why = f"the URL scheme {scheme(url)!r} needs a package that is not installed ({exc})"
        raise UsageError(f"{safe_url(url)}: {why}") from exc
    except Exception as exc:  # noqa: BLE001 - fsspec raises ValueError for an unknown scheme, others for bad URLs
        from fsspec.registry import known_implementations, registry

        if scheme(url) not in known_implementations and scheme(url) not in registry:
            why = f"unknown URL scheme {scheme(url)!r} (fsspec knows s3://, gs://, http(s)://, file://, ...)"
        else:
            why = f"not a usable URL ({type(exc).__name__}: {exc})"
        raise UsageError(f"{safe_url(url)}: {why}") from exc
