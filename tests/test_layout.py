"""The package's shape, kept by a test: which layer may import which, no
import cycles, and no module past the size where it needs splitting.

Runtime layers, lowest first (docs: DESIGN.md, each subpackage's docstring):
errors and argument checks -> transport -> procs -> execute -> train -> the
``conveyor.runtime`` package itself. A module may import its own layer and the
ones below, never above. The profiler (``conveyor.measure``) and the apps
(``conveyor.demo``, the CLI) sit above the runtime, which never imports them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "conveyor"
MAX_LINES = 400

RUNTIME_LAYERS = {
    "conveyor.runtime.errors": 0,
    "conveyor.runtime.checks": 0,
    "conveyor.runtime.transport": 1,
    "conveyor.runtime.procs": 2,
    "conveyor.runtime.execute": 3,
    "conveyor.runtime.train": 4,
    "conveyor.runtime": 5,  # the package's own __init__: the public API
}
ABOVE_RUNTIME = ("conveyor.measure", "conveyor.demo", "conveyor.cli")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[str]:
    """Every conveyor module the file imports, function-level imports
    included (a lazy import is still a dependency); ``from pkg import mod``
    counts as the submodule when it is one."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend(a.name for a in node.names if a.name.startswith("conveyor"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
                for _ in range(node.level - 1):
                    pkg = pkg.rsplit(".", 1)[0]
                base = f"{pkg}.{base}" if base else pkg
            if base.startswith("conveyor"):
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    found.append(sub if sub in MODULES else base)
    return found


IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> int | None:
    best = None
    for prefix, k in RUNTIME_LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, k)
    return None if best is None else best[1]


def test_runtime_layers_import_downward_only():
    bad = []
    for name, imported in IMPORTS.items():
        mine = _layer(name)
        if mine is None:
            continue
        for target in imported:
            theirs = _layer(target)
            if theirs is not None and theirs > mine:
                bad.append(f"{name} (layer {mine}) imports {target} (layer {theirs})")
            if target.startswith(ABOVE_RUNTIME):
                bad.append(f"{name} imports {target}, which sits above the runtime")
    assert not bad, "\n".join(bad)


def test_the_layer_table_covers_every_runtime_module():
    # A new subpackage must be given its place, not slip between the layers.
    loose = [n for n in MODULES if n.startswith("conveyor.runtime.")
             and _layer(n) == RUNTIME_LAYERS["conveyor.runtime"]]
    assert not loose, f"runtime modules outside every layer: {loose}"


def test_no_import_cycles():
    graph = {name: sorted({t for t in imported if t in MODULES and t != name})
             for name, imported in IMPORTS.items()}
    # Tarjan's strongly connected components; any component of 2+ is a cycle.
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def strong(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            strong(v)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size(name):
    lines = MODULES[name].read_text().count("\n")
    assert lines <= MAX_LINES, (f"{name} has {lines} lines; split it where the seams are "
                                f"(at most {MAX_LINES})")


def test_the_checker_sees_an_upward_import(tmp_path):
    # The test above is only as good as its parser: an upward import inside a
    # function must be caught.
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from conveyor.runtime.train.pipeline import Pipeline\n")
    found = _imports("conveyor.runtime.transport.fake", path)
    assert found == ["conveyor.runtime.train.pipeline"]
    assert _layer(found[0]) > _layer("conveyor.runtime.transport.fake")
