"""Renamed arguments: the old name keeps working for a while, with a ``DeprecationWarning`` saying the new one."""

from __future__ import annotations

import warnings
from typing import TypeVar

from pipeline.errors import UsageError

T = TypeVar("T")


def renamed_argument(new_value: T | None, old_value: T | None, old: str, new: str, where: str) -> T:
    """The value given as ``new``, or as ``old`` (warning that it is renamed); exactly one of them."""
    if old_value is None:
        if new_value is None:
            raise UsageError(f"{where} needs {new}")
        return new_value
    if new_value is not None:
        raise UsageError(f"{where} takes {new} (formerly {old}), not both")
    warnings.warn(f"{where}({old}=...) is renamed {new}=...", DeprecationWarning, stacklevel=3)
    return old_value
