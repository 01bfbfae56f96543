"""The house's shape, checked: the engine imports no protocol and no devnet code, no import cycles,
no module over 400 lines, no function of the keeper or its strategies over 60 lines."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import keeper

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("keeper", "strategies", "devnet")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def engine_modules() -> list[str]:
    return sorted(f"keeper.{m.name}" for m in pkgutil.iter_modules(keeper.__path__))


def test_the_engine_loads_no_protocol_and_no_devnet_module() -> None:
    modules = engine_modules()
    assert {"keeper.engine", "keeper.run", "keeper.cli", "keeper.registry"} <= set(modules)
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('strategies', 'devnet')))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.strip() == "[]", f"engine modules loaded: {proc.stdout}"


def _source_files() -> Iterator[Path]:
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Modules of this project imported at module level (inside `if TYPE_CHECKING` too)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    nodes = [n for n in tree.body]
    nodes += [c for n in tree.body if isinstance(n, ast.If) for c in n.body]
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] in PACKAGES)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (module -> the modules it imports), or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep, [*path, dep])):
                return cycle
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module, [module])):
            return cycle
    return None


def test_no_import_cycles() -> None:
    graph = {_module_name(p): _imports(p) for p in _source_files()}
    graph = {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}
    assert len(graph) > 50
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle or [])}"


def test_no_module_over_400_lines() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in _source_files()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"split these modules: {long}"


def test_no_keeper_or_strategy_function_over_60_lines() -> None:
    long = {}
    for package in ("keeper", "strategies"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = (node.end_lineno or node.lineno) - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        long[f"{path.relative_to(ROOT)}:{node.name}"] = lines
    assert not long, f"split these functions: {long}"


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """Imports are read (TYPE_CHECKING ones too) and a cycle is found."""
    (tmp_path / "a.py").write_text(
        "from typing import TYPE_CHECKING\nfrom keeper.b import x\nif TYPE_CHECKING:\n    import devnet.c\n"
    )
    assert _imports(tmp_path / "a.py") == {"keeper.b", "keeper.b.x", "devnet.c"}
    assert find_cycle({"keeper.a": {"keeper.b"}, "keeper.b": {"keeper.c"}, "keeper.c": {"keeper.a"}}) == [
        "keeper.a",
        "keeper.b",
        "keeper.c",
        "keeper.a",
    ]
    assert find_cycle({"keeper.a": {"keeper.b"}, "keeper.b": set()}) is None
