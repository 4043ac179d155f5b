"""``flock`` locks the processes of one machine share, on files whose names may change under them.

``flock`` locks belong to an open file, and the kernel drops them when the last descriptor of it is
closed, a dying process's included: a crash never leaves a lock held. Every lock here is released by
closing, never by unlocking, so a forked child that inherited a lock and closes its copy leaves its
parent's in place. A lock on a file that may be removed or replaced (an entry, a passing lock file)
counts only if the name still names the locked file afterwards (:func:`same_file`).

A forked child gets copies of its parent's descriptors, and with them its locks, which it would keep
for its whole life (a DataLoader worker lives for the run): a lock held for a moment (a fill, an
eviction) when a process forks is let go in the child at once. Holds (:func:`hold_shared`) are inherited.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import BinaryIO, Iterator

#: Descriptors of the locks this process holds for a moment; see :func:`_let_go_in_child`.
_MOMENTARY: set[int] = set()


def _let_go_in_child() -> None:
    """In a child just forked: point the descriptors of momentary locks at ``/dev/null``. The numbers
    stay valid for the file objects that own them (in frames that never run on in the child)."""
    if _MOMENTARY:
        null = os.open(os.devnull, os.O_RDONLY)
        for descriptor in _MOMENTARY:
            os.dup2(null, descriptor)
        os.close(null)
        _MOMENTARY.clear()


os.register_at_fork(after_in_child=_let_go_in_child)


@contextlib.contextmanager
def _momentary(file: BinaryIO) -> Iterator[None]:
    descriptor = file.fileno()
    _MOMENTARY.add(descriptor)
    try:
        yield
    finally:
        _MOMENTARY.discard(descriptor)


def same_file(file: BinaryIO, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``file`` (not removed, not replaced)."""
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    there = os.fstat(file.fileno())
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def hold_shared(path: Path, size: int) -> BinaryIO | None:
    """``path`` open with a shared lock, which lasts while it is open; None where no file of that size
    is there. Waits while another holds an exclusive lock (an eviction deciding about it)."""
    try:
        file: BinaryIO = open(path, "rb", buffering=0)
    except FileNotFoundError:
        return None
    fcntl.flock(file.fileno(), fcntl.LOCK_SH)
    if same_file(file, path) and os.fstat(file.fileno()).st_size == size:
        return file
    file.close()
    return None


@contextlib.contextmanager
def exclusive_if_free(path: Path) -> Iterator[bool]:
    """An exclusive lock on ``path`` for the block, if no other open file holds a lock on it (whether it was got)."""
    try:
        file: BinaryIO = open(path, "rb", buffering=0)
    except FileNotFoundError:
        yield False
        return
    with file:
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        with _momentary(file):
            yield same_file(file, path)


@contextlib.contextmanager
def lasting_lock(path: Path) -> Iterator[None]:
    """A lock file that stays (created at first use), held exclusively for the block."""
    with open(path, "ab") as file, _momentary(file):
        fcntl.flock(file.fileno(), fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def passing_lock(path: Path, wait: bool) -> Iterator[bool]:
    """An exclusive lock on a file that exists only while it is locked, so none is left over; whether it
    was got (without ``wait``, False where another holds it). Its holder removes it before unlocking;
    a process that locked a file removed meanwhile finds the name gone or taken, and tries again."""
    while True:
        with open(path, "ab") as file, _momentary(file):
            try:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            if same_file(file, path):
                try:
                    yield True
                finally:
                    path.unlink(missing_ok=True)
                return
