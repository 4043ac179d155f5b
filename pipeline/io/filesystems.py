"""The fsspec file system of a URL: the one place a URL becomes a file system and a path in it.

Every remote read and write (an output's :class:`~pipeline.storage.Storage`, its shards, a source
archive at a URL) opens its file system here, so a URL fsspec cannot open is the same one-line
:class:`~pipeline.errors.UsageError` wherever it is given.

One ``storage_options`` mapping serves every URL of a run, sources and output alike
(:func:`options_for`): its flat keys apply to every URL, and a key named after a protocol
(``"s3"``, ``"gs"``, ``"http"``, ``"https"``, ...) holding a mapping is a section that applies only
to URLs of that scheme, over the flat keys. A URL is handed only its own section: fsspec would pass
the others on as options of the file system, and an HTTP one passes them to every request.
"""

from __future__ import annotations

from typing import Any, Mapping

from pipeline.errors import UsageError
from pipeline.urls import safe_url, scheme


def options_for(url: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The options of ``url``: the flat keys of ``storage_options``, with the section named after
    the URL's scheme merged over them, and every other protocol's section left out."""
    from fsspec.registry import available_protocols

    options = dict(storage_options or {})
    protocols = set(available_protocols())
    chosen = {k: v for k, v in options.items() if not (k in protocols and isinstance(v, Mapping))}
    section = options.get(scheme(url))
    if isinstance(section, Mapping):
        chosen.update(section)
    return chosen


def url_filesystem(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """The fsspec file system of ``url`` and the path in it, made with the URL's own options
    (:func:`options_for`). A URL fsspec cannot open is a :class:`~pipeline.errors.UsageError`
    naming it: an unknown scheme, a package the scheme needs (``s3fs`` for ``s3://``, ...) missing,
    a malformed URL."""
    import fsspec.core

    try:
        return fsspec.core.url_to_fs(url, **options_for(url, storage_options))
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
