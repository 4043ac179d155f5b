"""A bounded local cache of an output's tar shards at URLs, shared by the processes of one machine.

Without it, a stream over ``s3://`` reads every byte range from the bucket again every epoch. With it,
a shard is copied whole to local disk once and read from then on as a local file (memory-mapped, as
local outputs are), so later epochs run at local speed.

Entries are content-addressed by the shard's sha256 from the manifest,
``<cache_dir>/ssmspine-shards/<sha256[:2]>/<sha256>.tar``: an output converted again never gets stale
bytes, and two outputs that share a shard share its entry. A fill downloads into
``<sha256>.tar.tmp-<pid>`` beside it (:class:`~pipeline.atomic.AtomicFile`), checks size and sha256,
fsyncs and renames; so a file under an entry's name is always complete and checked.

The ranks (processes) of one machine share a cache through ``flock`` locks, which the kernel drops
when a process dies, so a crash never leaves a lock behind:

- ``<sha256>.lock``, which exists only during a fill: one fill of an entry at a time; a second
  process asking for it waits, then finds it. A ``.tmp-`` file whose lock is free belongs to a
  fill that died: it is removed when the cache is opened or a fill of that entry starts.
- the entry file itself: every process using an entry holds a shared lock on it until
  :meth:`ShardCache.release`; eviction takes an exclusive one without waiting, so an entry in use
  anywhere on the machine is never evicted (no thrash: when every entry is in use, a fill that
  does not fit returns None and the caller reads that shard by ranges).
- ``evict.lock``: one process at a time counts, evicts and adds entries, so complete entries
  never add up to more than the limit (fills in flight are counted when they finish).

Eviction removes least recently used entries first (a hit touches the entry's mtime), and only
complete entries under the cache's own names in its own folder: never a user's file, never a fill in
flight. A file that was mapped before its entry was evicted stays readable through the mapping (the
inode lives until the last mapping and descriptor go), so eviction is safe on POSIX either way.
``cache_dir`` must be on a local file system (one machine's processes share it).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, NamedTuple

from pipeline.atomic import TMP_MARK, AtomicFile
from pipeline.checksums import file_sha256
from pipeline.errors import OutputError, UsageError
from pipeline.io.file_locks import exclusive_if_free, hold_shared, lasting_lock, passing_lock
from pipeline.urls import is_url, safe_url

log = logging.getLogger(__name__)

#: The cache's own folder inside ``cache_dir``: nothing outside it is ever touched.
FOLDER = "ssmspine-shards"
#: Writes ``bytes`` of the object to the file it is given (the cache checks what arrives).
Download = Callable[[BinaryIO], None]
#: The cache-wide lock, around counting, evicting and adding entries.
EVICT_LOCK = "evict.lock"

_SHA256 = re.compile(r"[0-9a-f]{64}")
_PREFIX = re.compile(r"[0-9a-f]{2}")
_ENTRY = re.compile(r"[0-9a-f]{64}\.tar")
_TEMPORARY = re.compile(rf"([0-9a-f]{{64}})\.tar{re.escape(TMP_MARK)}[0-9]+")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class _Entry(NamedTuple):
    """A complete entry on disk, as eviction sees it."""

    path: Path
    size: int
    used_ns: int


class ShardCache:
    """Whole shards at URLs, kept as local files under ``cache_dir``, at most ``limit_bytes`` of them.

    Open one per process (a forked child may use its parent's: it inherits the parent's holds).
    Entries returned by :meth:`cached` and :meth:`fill` are held, by this process, until
    :meth:`release` (or the end of a ``with`` block); held entries are never evicted by anyone.
    """

    def __init__(self, cache_dir: str | os.PathLike, limit_bytes: int) -> None:
        if isinstance(limit_bytes, bool) or not isinstance(limit_bytes, int) or limit_bytes < 0:
            raise UsageError(f"cache_limit must be a whole number of bytes >= 0, not {limit_bytes!r}")
        if is_url(os.fspath(cache_dir)):
            raise UsageError(f"cache_dir must be a local folder, not a URL: {safe_url(os.fspath(cache_dir))}")
        if Path(cache_dir).exists() and not Path(cache_dir).is_dir():
            raise UsageError(f"cache_dir {cache_dir} is a file: give a folder for the shard cache")
        self.root = Path(cache_dir) / FOLDER
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UsageError(f"cache_dir {cache_dir} cannot be used: {error.strerror}") from None
        self.limit_bytes = limit_bytes
        #: sha256 -> the open, locked entry; each operation on it is atomic, so threads share it unguarded
        self._held: dict[str, BinaryIO] = {}
        self._remove_dead_fills()

    def entry_path(self, sha256: str) -> Path:
        """Where the entry of this sha256 lives (whether or not it is there)."""
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            raise UsageError(f"a shard's sha256 must be 64 lower-case hex digits, not {sha256!r}")
        return self.root / sha256[:2] / f"{sha256}.tar"

    def cached(self, sha256: str, size: int) -> Path | None:
        """The local copy of the shard, now held and marked as used; None on a miss."""
        path = self._checked(sha256, size)
        if (held := self._held.get(sha256)) is not None:
            if os.fstat(held.fileno()).st_size != size:
                return None
        elif (held := hold_shared(path, size)) is not None:
            self._keep(sha256, held)
        else:
            return None
        _touch(path)
        return path

    def fill(self, sha256: str, size: int, name: str, download: Download) -> Path | None:
        """Download the shard (``name``: its URL, for messages) into the cache and hold it; its path.

        None when it cannot fit under the limit without evicting entries in use (or the disk is
        full): the caller reads it by ranges instead. Another process filling the same entry is
        waited for, and its copy used. A download that does not match ``size`` and ``sha256``
        raises :class:`~pipeline.errors.OutputError` naming ``name``; it leaves nothing behind,
        as does any error of ``download``, which passes to the caller.
        """
        if (hit := self.cached(sha256, size)) is not None:
            return hit
        path = self.entry_path(sha256)
        if size > self.limit_bytes:
            return None  # it would never fit: not worth a download
        path.parent.mkdir(exist_ok=True)
        with passing_lock(path.with_suffix(".lock"), wait=True):
            if (hit := self.cached(sha256, size)) is not None:  # another process filled it while we waited
                return hit
            self._remove_temporaries(path.parent, sha256)  # its lock was free: their fill died
            with lasting_lock(self.root / EVICT_LOCK):
                if not self._make_room(size, replacing=path):
                    return None
            held = self._download(path, size, name, download)
        if held is None:
            return None
        self._keep(sha256, held)
        return path

    def release(self) -> None:
        """Let every entry this process holds be evicted again (by closing, never unlocking: a forked
        child's release leaves its parent's holds, which share the lock, in place)."""
        held, self._held = self._held, {}
        for file in list(held.values()):
            file.close()

    def __enter__(self) -> ShardCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _keep(self, sha256: str, held: BinaryIO) -> None:
        if self._held.setdefault(sha256, held) is not held:  # another thread of ours held it first
            held.close()

    def _checked(self, sha256: str, size: int) -> Path:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise UsageError(f"a shard's size must be a whole number of bytes >= 0, not {size!r}")
        return self.entry_path(sha256)

    def _download(self, path: Path, size: int, name: str, download: Download) -> BinaryIO | None:
        """The fill itself, under the entry's lock: the new entry, held, or None where the disk is
        full or entries in use took the room meanwhile."""
        target, held = AtomicFile(path), None
        try:
            download(target.file)
            target.close()  # flushed and fsynced, still under its temporary name
            _check(target.tmp_path, size, path.stem, name)
            held = hold_shared(target.tmp_path, size)  # held from before it has its name: never evicted
            with lasting_lock(self.root / EVICT_LOCK):
                if held is None or not self._make_room(size, replacing=path):
                    raise _NoRoom
                target.commit()
            _sync_folder(path.parent)
            _touch(path)
            return held
        except BaseException as error:
            target.abort()
            if held is not None:
                held.close()
            if isinstance(error, _NoRoom) or (isinstance(error, OSError) and error.errno in _DISK_FULL):
                log.info("shard cache: no room for %s (%d bytes): read by ranges instead", safe_url(name), size)
                return None
            raise

    def _make_room(self, size: int, replacing: Path) -> bool:
        """Under ``evict.lock``: evict entries no process holds, least recently used first, until
        ``size`` more bytes fit; where they cannot, evict nothing and say so."""
        entries = sorted((e for e in self._entries() if e.path != replacing), key=lambda e: (e.used_ns, e.path.name))
        excess = sum(e.size for e in entries) + size - self.limit_bytes
        chosen: list[_Entry] = []
        with contextlib.ExitStack() as locks:
            for entry in entries:
                if sum(e.size for e in chosen) >= excess:
                    break
                if locks.enter_context(exclusive_if_free(entry.path)):  # held by nobody, now or until unlinked
                    chosen.append(entry)
            if sum(e.size for e in chosen) < excess:
                log.debug("shard cache: %d bytes do not fit: the entries in use fill the limit", size)
                return False
            for entry in chosen:
                entry.path.unlink()
                log.debug("shard cache: evicted %s (%d bytes)", entry.path.name, entry.size)
        return True

    def _entries(self) -> list[_Entry]:
        """The complete entries: regular files under the cache's own names in its own folders."""
        found = []
        for folder in _folders(self.root):
            for item in os.scandir(folder):
                if _ENTRY.fullmatch(item.name) and item.name.startswith(folder.name):
                    with contextlib.suppress(FileNotFoundError):  # evicted by another process meanwhile
                        if item.is_file(follow_symlinks=False):
                            stat = item.stat(follow_symlinks=False)
                            found.append(_Entry(Path(item.path), stat.st_size, stat.st_mtime_ns))
        return found

    def _remove_dead_fills(self) -> None:
        """Temporary files of fills whose process died (their entry's lock is free), at opening."""
        for folder in _folders(self.root):
            dead = {m[1] for item in os.scandir(folder) if (m := _TEMPORARY.fullmatch(item.name))}
            for sha256 in dead:
                with passing_lock(Path(folder.path) / f"{sha256}.lock", wait=False) as free:
                    if free:
                        self._remove_temporaries(Path(folder.path), sha256)

    @staticmethod
    def _remove_temporaries(folder: Path, sha256: str) -> None:
        """Every temporary file of this entry; only under its lock, so none is a live fill."""
        for item in os.scandir(folder):
            match = _TEMPORARY.fullmatch(item.name)
            if match and match[1] == sha256 and item.is_file(follow_symlinks=False):
                Path(item.path).unlink(missing_ok=True)
                log.info("shard cache: removed %s, left by a fill that died", item.name)


class _NoRoom(Exception):
    """Entries in use took the room while this fill downloaded."""


class ShardChanged(OutputError):
    """A download that is not the manifest's shard: the object changed after the output was written."""


def _check(path: Path, size: int, sha256: str, name: str) -> None:
    """A one-line error naming the URL where the download is not the manifest's shard."""
    actual = path.stat().st_size
    if actual != size:
        raise ShardChanged(f"{safe_url(name)}: downloaded {actual} bytes, the manifest says {size}; convert again")
    if (digest := file_sha256(path)) != sha256:
        raise ShardChanged(
            f"{safe_url(name)}: its sha256 is {digest}, the manifest says {sha256}: "
            "the object changed after the output was written; convert again"
        )


def _folders(root: Path) -> Iterator[os.DirEntry]:
    return (d for d in os.scandir(root) if _PREFIX.fullmatch(d.name) and d.is_dir(follow_symlinks=False))


def _touch(path: Path) -> None:
    """Mark an entry as used now, for least-recently-used eviction."""
    with contextlib.suppress(OSError):  # a cache another user owns: eviction order is all it costs
        os.utime(path)


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` last through a power cut."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
