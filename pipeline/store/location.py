"""Where the bytes of a converted output come from: ranged reads of its tar shards, and its manifest.

The manifest records the byte range of every field of every sample in its tar, so a sample is
fetched by ranged reads of only the fields asked for — which is what makes a global shuffle
cheap. One store per process, opened lazily, chosen by :func:`range_reader_class` from the root:

* a local path: memory maps of the shards, a bounded number kept mapped;
* ``http(s)://``: ``Range`` GETs on one kept-alive connection, standard library only;
* any other fsspec URL (``file://``, ``s3://``, ``memory://``, ...): ``cat_file`` ranges.

Adjacent fields of a sample (at most ``coalesce_gap`` bytes apart) are fetched with one read. What
every store checks before trusting a shard's offsets is in :mod:`pipeline.store.range_readers`; how
remote reads retry, in :mod:`pipeline.store.remote_ranges`.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from pipeline.store import manifest
from pipeline.store.range_readers import LocalRangeReader, RangeReader
from pipeline.store.remote_ranges import FsspecRangeReader, HttpRangeReader
from pipeline.urls import is_url, safe_url, scheme

__all__ = ["RangeReader", "LocalRangeReader", "open_range_reader", "range_reader_class", "read_stream_manifest"]


def range_reader_class(root: str) -> type[RangeReader]:
    if not is_url(root):
        return LocalRangeReader
    if scheme(root) in ("http", "https"):
        return HttpRangeReader
    return FsspecRangeReader


def open_range_reader(
    root: str, files: Sequence[str], sizes: Sequence[int], storage_options: Mapping | None = None
) -> RangeReader:
    """The reader of shards ``files`` (of ``sizes`` bytes, as the manifest says) of the output at
    ``root``; with ``storage_options``, any URL (``http(s)://`` too) is read through fsspec."""
    if storage_options and is_url(root):
        return FsspecRangeReader(root, files, sizes, storage_options)
    return range_reader_class(root)(root, files, sizes)


def read_stream_manifest(root: str, storage_options: Mapping | None = None) -> manifest.Manifest:
    """The manifest of the output at a local directory or URL, checked for format and version.

    With ``storage_options``, any URL (``http(s)://`` too) is read through fsspec, which takes them.
    """
    if not is_url(root):
        return manifest.read_manifest(root)
    store = open_range_reader(root, [], [], storage_options)
    try:
        data = store.fetch(manifest.MANIFEST_NAME)  # type: ignore[attr-defined]
    finally:
        store.close()
    return manifest.parse_manifest(data, f"{safe_url(root).rstrip('/')}/{manifest.MANIFEST_NAME}")
