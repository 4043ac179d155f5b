"""The package's shape, checked: floors import only downwards, no private name crosses a module, rooms stay small.

The floors (docs/ARCHITECTURE.md): the ground floor (``pipeline/*.py``) imports nothing of ours
above it; ``source/`` and ``store/`` import only the ground floor; ``convert/`` and ``verify/``
import the source, the store and the ground floor; ``read/`` the store and the ground floor;
``tools/`` the readers, the store, the source and the ground floor; ``bench/`` and ``cli``
anything below them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "pipeline"
GROUND = "ground"
#: floor -> the floors it may import (itself included)
ALLOWED = {
    GROUND: {GROUND},
    "source": {"source", GROUND},
    "store": {"store", GROUND},
    "convert": {"convert", "source", "store", GROUND},
    "verify": {"verify", "source", "store", GROUND},
    "read": {"read", "store", GROUND},
    "tools": {"tools", "read", "store", "source", GROUND},
    "bench": {"bench", "tools", "read", "convert", "verify", "source", "store", GROUND},
    "cli": {"cli", "tools", "read", "convert", "verify", "source", "store", GROUND},
    "facade": {"facade", "read", "store", "tools", GROUND},
}
MAX_LINES = 300


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _dotted(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _floor(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "facade"  # pipeline/__init__.py
    if parts[1] == "cli":
        return "cli"
    if parts[1] in ALLOWED and parts[1] not in (GROUND, "facade"):
        return parts[1]
    return GROUND


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """``(line, module, names)`` of every import of ours in ``path``, relative ones resolved."""
    here = _dotted(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.append((node.lineno, module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names]
    return [(line, module, names) for line, module, names in found if module.split(".")[0] == "pipeline"]


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_imports_go_down_the_floors_and_name_nothing_private(path):
    floor = _floor(_dotted(path))
    for line, module, names in _imports(path):
        targets = [module] + [
            f"{module}.{n}" for n in names if (PACKAGE.parent / f"{module}.{n}".replace(".", "/")).exists()
        ]
        for target in targets:
            assert _floor(target) in ALLOWED[floor], f"{path.name}:{line}: floor {floor} imports {target}"
        private = [n for n in names if n.startswith("_") and n != "__version__"]
        assert not private, f"{path.name}:{line}: imports private name(s) {private} from {module}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_no_module_is_over_300_lines(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE.parent)} has {lines} lines; split it along its concerns"


def test_the_floor_rules_are_checked_for_real():
    """The checker itself: an upward import is caught (a ground-floor module importing a reader)."""
    assert _floor("pipeline.schema") == GROUND and _floor("pipeline.read.stream.order") == "read"
    assert _floor("pipeline.tools.synth.archive") == "tools" and _floor("pipeline") == "facade"
    assert "read" not in ALLOWED[_floor("pipeline.store.tar_shards")]
