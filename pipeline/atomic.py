"""Atomic file writes: write under a temporary name, fsync, then rename into place.

Every file a conversion produces goes through here, so an interrupted run leaves at worst
``*.tmp-<pid>`` files (removed by the next run), never a file that looks complete but is not.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

TMP_MARK = ".tmp-"


class AtomicFile:
    """A binary file that appears at ``path`` only when :meth:`commit` is called."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_path = self.path.with_name(f"{self.path.name}{TMP_MARK}{os.getpid()}")
        self.file: BinaryIO = open(self.tmp_path, "wb")

    def close(self) -> None:
        """Flush everything to disk, still under the temporary name."""
        if not self.file.closed:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()

    def commit(self) -> None:
        self.close()
        os.replace(self.tmp_path, self.path)

    def abort(self) -> None:
        try:
            self.file.close()
        finally:
            self.tmp_path.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    target = AtomicFile(path)
    try:
        target.file.write(data)
        target.commit()
    except BaseException:
        target.abort()
        raise


def remove_temporaries(folder: str | os.PathLike) -> int:
    """Delete temporary files left under ``folder`` by interrupted runs; return how many."""
    stale = [p for p in Path(folder).rglob(f"*{TMP_MARK}*") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)
