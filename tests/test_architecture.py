"""The package's shape, checked: floors import only downwards, no private name crosses a module, rooms stay small.

The floors (docs/ARCHITECTURE.md): the ground floor (``pipeline/*.py``) imports nothing of ours
above it; ``source/`` and ``store/`` import only the ground floor; ``convert/`` and ``verify/``
import the source, the store and the ground floor; ``read/`` the store and the ground floor;
``tools/`` the readers, the store, the source and the ground floor; ``cli`` anything below it.
The benchmarks (``benchmarks/``, beside the package and not installed with it) may import any of
``pipeline`` but none of its private names, and no module of ``pipeline`` imports them.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "pipeline"
#: beside the package, not installed with it (pyproject.toml installs ``pipeline*``)
BENCHMARKS = ROOT / "benchmarks"
#: the top-level names of our code: imports of these are checked
OURS = ("pipeline", "benchmarks")
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
    "cli": {"cli", "tools", "read", "convert", "verify", "source", "store", GROUND},
    "facade": {"facade", "read", "store", "tools", GROUND},
}
MAX_LINES = 300


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _benchmark_modules() -> list[Path]:
    return sorted(BENCHMARKS.rglob("*.py"))


def _dotted(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _floor(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "benchmarks":
        return "benchmarks"  # on no floor of the package: no floor may import it
    if len(parts) == 1:
        return "facade"  # pipeline/__init__.py
    if parts[1] == "cli":
        return "cli"
    if parts[1] in ALLOWED and parts[1] not in (GROUND, "facade"):
        return parts[1]
    return GROUND


def _imports(path: Path, source: str | None = None) -> list[tuple[int, str, list[str]]]:
    """``(line, module, names)`` of every import of ours in ``path`` (or in ``source``, as if it were
    that module's), relative ones resolved."""
    here = _dotted(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.append((node.lineno, module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names]
    return [(line, module, names) for line, module, names in found if module.split(".")[0] in OURS]


def _private(names: list[str]) -> list[str]:
    return [n for n in names if n.startswith("_") and n != "__version__"]


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_down_the_floors_and_name_nothing_private(path):
    floor = _floor(_dotted(path))
    for line, module, names in _imports(path):
        targets = [module] + [f"{module}.{n}" for n in names if (ROOT / f"{module}.{n}".replace(".", "/")).exists()]
        for target in targets:
            assert _floor(target) != "benchmarks", (
                f"{path.name}:{line}: the package imports {target}; the benchmarks are not installed with it"
            )
            assert _floor(target) in ALLOWED[floor], f"{path.name}:{line}: floor {floor} imports {target}"
        private = _private(names)
        assert not private, f"{path.name}:{line}: imports private name(s) {private} from {module}"


@pytest.mark.parametrize("path", _benchmark_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_benchmarks_name_nothing_private(path):
    for line, module, names in _imports(path):
        private = _private(names)
        assert not private, f"{path.name}:{line}: imports private name(s) {private} from {module}"


@pytest.mark.parametrize("path", _modules() + _benchmark_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_over_300_lines(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines; split it along its concerns"


def test_the_floor_rules_are_checked_for_real():
    """The checker itself: an upward import is caught (a ground-floor module importing a reader)."""
    assert _floor("pipeline.schema") == GROUND and _floor("pipeline.read.stream.order") == "read"
    assert _floor("pipeline.tools.synth.archive") == "tools" and _floor("pipeline") == "facade"
    assert "read" not in ALLOWED[_floor("pipeline.store.tar_shards")]
    assert _floor("benchmarks.scale.probe") == "benchmarks" and not any("benchmarks" in a for a in ALLOWED.values())
    source = "from benchmarks.common import markdown_table\nfrom pipeline.source.zip_local import _header\n"
    found = _imports(BENCHMARKS / "report.py", source)
    assert [(m, _private(n)) for _, m, n in found] == [
        ("benchmarks.common", []),
        ("pipeline.source.zip_local", ["_header"]),
    ]


def test_the_wheel_holds_the_package_and_not_the_benchmarks():
    """The packages setuptools puts in the wheel, found by ``pyproject.toml``'s own rule (a built wheel,
    ``pip wheel --no-deps . && unzip -l``, lists the same ``pipeline/`` and no ``benchmarks/``)."""
    setuptools = pytest.importorskip("setuptools")
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    rule = {"include": find.get("include", ("*",)), "exclude": find.get("exclude", ())}
    packages = setuptools.find_namespace_packages(str(ROOT), **rule)
    assert {"pipeline", "pipeline.read", "pipeline.store"} <= set(packages), packages
    assert "benchmarks" in setuptools.find_namespace_packages(str(ROOT), include=["benchmarks*"]), "the finder sees it"
    installed = [p for p in packages if p.split(".")[0] == "benchmarks" or p.startswith("pipeline.bench")]
    assert not installed, f"the benchmarks would be installed with the library: {installed}"


def _import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports anywhere (in functions and under ``TYPE_CHECKING`` too):
    ``from pipeline.x import y`` counts as importing ``pipeline.x.y`` where that is a module."""
    graph = {}
    for path in _modules() + _benchmark_modules():
        targets = set()
        for _, module, names in _imports(path):
            submodules = [f"{module}.{n}" for n in names if _is_module(f"{module}.{n}")]
            targets.update(submodules)
            if len(submodules) < len(names) or not names:
                targets.add(module)
        graph[_dotted(path)] = targets - {_dotted(path)}
    return graph


def _is_module(dotted: str) -> bool:
    base = ROOT / dotted.replace(".", "/")
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph``: one path that returns to its start, per module found on a cycle."""
    found, done = [], set()
    for start in sorted(graph):
        stack = [(start, [start])]
        seen = set()
        while stack:
            module, path = stack.pop()
            for target in sorted(graph.get(module, ())):
                if target == start:
                    found.append(path + [start])
                    stack.clear()
                    break
                if target not in seen and target not in done:
                    seen.add(target)
                    stack.append((target, path + [target]))
        done.add(start)
    return found


def test_no_module_imports_itself_round_a_cycle():
    cycles = _cycles(_import_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_the_cycle_check_finds_cycles_through_type_checking_imports():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
    source += "    from pipeline.read.batch_memory.pool import SlotPool\n"
    tree = PACKAGE / "read" / "batch_memory" / "registry.py"
    assert ("pipeline.read.batch_memory.pool", ["SlotPool"]) in [(m, n) for _, m, n in _imports(tree, source)]


def test_only_the_item_contract_names_key_and_pad():
    """Every sample and batch the readers hand out is built by :mod:`pipeline.read.items`: no other module
    of ``read/`` spells ``"__key__"`` or ``"__pad__"`` in its code (docstrings may)."""
    spelled = []
    for path in sorted((PACKAGE / "read").rglob("*.py")):
        if path.name == "items.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and id(node) not in docstrings and node.value in ("__key__", "__pad__"):
                spelled.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not spelled, f"build items with pipeline.read.items, not by hand: {spelled}"


def test_the_io_room_sits_below_storage():
    """Within the ground floor, ``io/`` (where bytes come from) is below ``storage`` (where an output
    lives), which reads and writes through it: no module of ``io/`` reaches ``storage``, even by way of another."""
    graph = _import_graph()
    for start in (m for m in graph if m.startswith("pipeline.io")):
        reached, todo = set(), [start]
        while todo:
            for target in graph.get(todo.pop(), ()):
                if target not in reached:
                    reached.add(target)
                    todo.append(target)
        assert "pipeline.storage" not in reached, f"{start} reaches pipeline.storage; move what it needs into io/"
