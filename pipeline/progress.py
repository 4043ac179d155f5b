"""The one progress helper: a tqdm bar on a terminal, an occasional plain line in a log, or nothing.

tqdm redraws its bar with carriage returns, which a log file (CI, ``nohup``, a batch scheduler)
keeps as one ever-growing line; when stderr is not a terminal, :class:`LineProgress` writes a
plain line now and then instead, and one at the end.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

from tqdm.auto import tqdm

#: Seconds between two progress lines in a log.
LINE_EVERY_SECONDS = 30.0


class LineProgress:
    """Progress as a plain line every :data:`LINE_EVERY_SECONDS` and when the work is complete."""

    def __init__(
        self,
        total: int,
        desc: str,
        file: TextIO | None = None,
        every: float = LINE_EVERY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.desc, self.every, self.clock = total, desc, every, clock
        self.file = file or sys.stderr
        self.done = 0
        self.started = self.last = clock()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def update(self, n: int) -> None:
        self.done += n
        now = self.clock()
        if self.done >= self.total or now - self.last >= self.every:
            self.last = now
            elapsed = now - self.started
            rate = f", {self.done / elapsed:.1f} samples/s" if elapsed > 0 else ""
            print(
                f"{self.desc}: {self.done}/{self.total} samples ({100 * self.done // max(self.total, 1)}%)"
                f"{rate}, {elapsed:.0f} s",
                file=self.file,
                flush=True,
            )


def progress_bar(total: int, desc: str, enabled: bool = True) -> tqdm | LineProgress:
    """A tqdm bar where stderr is a terminal, else :class:`LineProgress` (both off when not ``enabled``)."""
    if enabled and not sys.stderr.isatty():
        return LineProgress(total, desc)
    return tqdm(total=total, unit="sample", desc=desc, disable=not enabled, smoothing=0.1, dynamic_ncols=True)
