"""The one progress helper: a tqdm bar on stderr, off when not wanted (tests, scripts)."""

from __future__ import annotations

from tqdm.auto import tqdm


def progress_bar(total: int, desc: str, enabled: bool = True) -> tqdm:
    return tqdm(total=total, unit="sample", desc=desc, disable=not enabled, smoothing=0.1, dynamic_ncols=True)
