"""Checked access to the members of a JSON object we wrote: the parsers of our records share it.

A manifest or progress record that was edited by hand, cut short or written by another tool must
fail as one line naming the file and the member, never as a ``KeyError`` deep inside a reader.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from pipeline.errors import OutputError

_MISSING = object()


class JsonObject:
    """One JSON object of a record, with ``where`` (file and path of the object) for errors."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise OutputError(f"{where}: expected a JSON object, found {type(data).__name__}")
        self.data: Mapping[str, Any] = data
        self.where = where

    def error(self, name: str, reason: str) -> OutputError:
        return OutputError(f"{self.where}.{name}: {reason}")

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = _MISSING) -> Any:
        """The member ``name``, which must be a ``kind`` (``bool`` never passes for ``int``)."""
        if name not in self.data:
            if default is _MISSING:
                raise self.error(name, "missing")
            return default
        value = self.data[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            expected = " or ".join(k.__name__ for k in kinds)
            raise self.error(name, f"expected {expected}, found {type(value).__name__}")
        return value

    def parsed(self, name: str, parse: Callable[[Any], Any], kind: type = dict) -> Any:
        """``parse(member)`` for a member whose own parser raises ``KeyError``/``TypeError``/``ValueError``."""
        value = self.get(name, kind)
        try:
            return parse(value)
        except (KeyError, TypeError, ValueError) as exc:
            raise self.error(name, f"malformed ({type(exc).__name__}: {exc})") from exc

    def object(self, name: str, default: Any = _MISSING) -> "JsonObject":
        value = self.get(name, dict, {} if default is not _MISSING else _MISSING)
        return JsonObject(value, f"{self.where}.{name}")

    def list(self, name: str, length: int | None = None, default: Any = _MISSING) -> list:
        """The list ``name``, of ``length`` items if given (its items are the caller's to check)."""
        value = self.get(name, list, default)
        if length is not None and len(value) != length:
            raise self.error(name, f"has {len(value)} entries, expected {length}")
        return value

    def objects(self, name: str, default: Any = _MISSING) -> list["JsonObject"]:
        return [JsonObject(item, f"{self.where}.{name}[{i}]") for i, item in enumerate(self.list(name, None, default))]
