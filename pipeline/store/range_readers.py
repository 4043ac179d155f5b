"""Ranged reads of an output's tar shards: the interface every store implements, and local shards.

A store is opened once per process; :mod:`pipeline.store.location` picks one from the output's root
(:mod:`pipeline.store.remote_ranges` has those for URLs). Every store checks a shard's size against
the manifest before trusting its offsets.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

from pipeline.errors import OutputError
from pipeline.io.byte_source import LocalFile
from pipeline.urls import safe_url

#: Requested fields of one sample separated by at most this many bytes are read with one request.
LOCAL_COALESCE_GAP = 64 << 10
REMOTE_COALESCE_GAP = 1 << 20


class RangeRead(NamedTuple):
    """One read of :meth:`RangeReader.read_many`: ``length`` bytes of shard number ``shard`` from
    ``offset``, into ``into`` (the caller's memory) where the store copies."""

    shard: int
    offset: int
    length: int
    into: memoryview | None = None


class RangeReader:
    """Ranged reads of the shards of one output; one per process, opened lazily."""

    coalesce_gap = REMOTE_COALESCE_GAP

    def __init__(self, root: str, files: Sequence[str], sizes: Sequence[int]) -> None:
        self.root = root
        self.files = list(files)
        self.sizes = list(sizes)

    def name(self, shard: int) -> str:
        """The shard's path or URL, as messages name it (a URL without credentials)."""
        return f"{safe_url(self.root).rstrip('/')}/{self.files[shard]}"

    #: Whether :meth:`read` copies into memory the caller provides (else ``into`` is not needed).
    copies = True

    def read(self, shard: int, offset: int, length: int, into: memoryview | None = None) -> memoryview:
        """``length`` bytes of ``shard`` from ``offset``, as a view: of ``into`` (the caller's
        reused memory, at least ``length`` bytes) where the store copies, of the store's own
        memory where it does not (a memory map, or bytes its library hands over anyway).

        Views of the store's own memory stay valid for as long as they are referenced.
        """
        raise NotImplementedError

    def read_many(self, reads: Sequence[RangeRead]) -> list[memoryview]:
        """:meth:`read` of each; stores that can have several requests in flight (object stores) send them at once."""
        return [self.read(*read) for read in reads]

    def close(self) -> None:
        pass

    def mapped(self, shard: int, path: str) -> memoryview:
        """The local file at ``path`` as shard ``shard``: its size checked against the manifest
        (an :class:`OutputError`), then memory-mapped. ``OSError`` (a missing file too) and
        ``ValueError`` pass to the caller, which says what a shard it cannot map means there."""
        file = LocalFile(path)
        try:
            if (size := file.size()) != self.sizes[shard]:
                raise self._size_mismatch(shard, size)
            return file.map()
        finally:
            file.close()

    def view(self, mapped: memoryview, shard: int, offset: int, length: int) -> memoryview:
        """``length`` bytes from ``offset`` of shard ``shard``'s map, which must hold them."""
        if offset + length > len(mapped):
            raise OutputError(f"{self.name(shard)}: ends before byte {offset + length}; the shard is truncated")
        return mapped[offset : offset + length]

    def _size_mismatch(self, shard: int, actual: int) -> OutputError:
        return OutputError(
            f"{self.name(shard)}: has {actual} bytes, the manifest says {self.sizes[shard]}: "
            "the shard is truncated or was replaced; convert again"
        )


class LocalRangeReader(RangeReader):
    """Local shards, memory-mapped (:meth:`~pipeline.io.byte_source.LocalFile.map`): a read is a view
    of the page cache, so fetching a sample copies nothing, and the decode threads read their
    samples' bytes in parallel.

    A shard's size is checked against the manifest when it is mapped. A shard truncated later,
    while mapped, makes the process fail with SIGBUS when it reads past the new end: loud, but
    not an error message; the manifest check catches it when the next job opens the shard.
    """

    coalesce_gap = LOCAL_COALESCE_GAP
    copies = False
    max_open = 64  # shards kept mapped at once; a global shuffle may touch every shard per batch

    def __init__(self, root: str, files: Sequence[str], sizes: Sequence[int]) -> None:
        super().__init__(root, files, sizes)
        self._maps: dict[int, memoryview] = {}

    def _map(self, shard: int) -> memoryview:
        view = self._maps.get(shard)
        if view is None:
            path = self.name(shard)
            try:
                view = self.mapped(shard, path)
            except FileNotFoundError:
                raise OutputError(f"{path}: shard is missing; convert again or fix the path") from None
            except (OSError, ValueError) as exc:
                raise OutputError(f"{path}: cannot map shard ({exc})") from exc
            if len(self._maps) >= self.max_open:  # unmapped once no view of it is left
                del self._maps[next(iter(self._maps))]
            self._maps[shard] = view
        return view

    def read(self, shard: int, offset: int, length: int, into: memoryview | None = None) -> memoryview:
        return self.view(self._map(shard), shard, offset, length)

    def close(self) -> None:
        self._maps.clear()
