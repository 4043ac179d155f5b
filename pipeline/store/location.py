"""Where the bytes of a converted output come from: ranged reads of its tar shards, and its manifest.

The manifest records the byte range of every field of every sample in its tar, so a sample is
fetched by ranged reads of only the fields asked for — which is what makes a global shuffle
cheap. One store per process, opened lazily, chosen by :func:`range_reader_class` from the root:

* a local path: memory maps of the shards, a bounded number kept mapped;
* a URL (``http(s)://``, ``s3://``, ``file://``, ...): fsspec's ``cat_file`` and ``cat_ranges``
  (a batch's reads at once), with ``storage_options`` when given.

Adjacent fields of a sample (at most ``coalesce_gap`` bytes apart) are fetched with one read. What
every store checks before trusting a shard's offsets is in :mod:`pipeline.store.range_readers`; both
stores read through :mod:`pipeline.io` (local files, objects at URLs, and how remote reads retry and fail).
"""

from __future__ import annotations

from typing import Mapping, Sequence

from pipeline.store import manifest
from pipeline.store.range_readers import LocalRangeReader, RangeReader
from pipeline.store.remote_ranges import FsspecRangeReader
from pipeline.urls import is_url, safe_url

__all__ = ["RangeReader", "LocalRangeReader", "open_range_reader", "range_reader_class", "read_stream_manifest"]


def range_reader_class(root: str) -> type[RangeReader]:
    return FsspecRangeReader if is_url(root) else LocalRangeReader


def open_range_reader(
    root: str, files: Sequence[str], sizes: Sequence[int], storage_options: Mapping | None = None
) -> RangeReader:
    """The reader of shards ``files`` (of ``sizes`` bytes, as the manifest says) of the output at
    ``root``; ``storage_options`` go to fsspec for a URL."""
    if is_url(root):
        return FsspecRangeReader(root, files, sizes, storage_options)
    return LocalRangeReader(root, files, sizes)


def read_stream_manifest(root: str, storage_options: Mapping | None = None) -> manifest.Manifest:
    """The manifest of the output at a local directory or URL (``storage_options`` go to fsspec),
    checked for format and version."""
    if not is_url(root):
        return manifest.read_manifest(root)
    store = open_range_reader(root, [], [], storage_options)
    try:
        data = store.fetch(manifest.MANIFEST_NAME)  # type: ignore[attr-defined]
    finally:
        store.close()
    return manifest.parse_manifest(data, f"{safe_url(root).rstrip('/')}/{manifest.MANIFEST_NAME}")
