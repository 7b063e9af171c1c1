"""Layers import one way: cli -> experiment/report -> stages -> methods/evaluation/curation/repair/sink
-> modeling -> data -> settings, and packages of one layer never import each other.

Every module of src/clinic is parsed with ``ast`` (function-level and ``TYPE_CHECKING`` imports
included: a lazy import is still a dependency) and each ``clinic`` import is checked against
:data:`LAYERS`: a module may import its own layer or a lower one, never a higher one; and the
units of the table (packages, or the modules named on their own) must not import each other in
a cycle, even within one layer (report <-> experiment was one). A new top-level module or
package must be given a layer here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# module or package -> layer (higher imports lower); the longest matching name decides, so a
# stage module inside a lower package (curation.stage) sits with the stages.
LAYERS = {
    "clinic": 0, "clinic.settings": 0, "clinic.errors": 0, "clinic.values": 0, "clinic.rundir": 0, "clinic.registry": 0,
    "clinic.data": 1,
    "clinic.modeling": 2,
    "clinic.methods": 3, "clinic.evaluation": 3, "clinic.curation": 3, "clinic.repair": 3, "clinic.sink": 3,
    "clinic.stages": 4,
    "clinic.experiment": 5, "clinic.report": 5,
    "clinic.cli": 6,
}
LAYER_NAMES = ["settings", "data", "modeling", "methods/evaluation/curation/repair/sink", "stages", "experiment/report",
               "cli"]


def module_files(src: Path, top: str = "clinic") -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package ``top`` under ``src``."""
    found = {}
    for path in sorted((src / top).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: set[str], top: str = "clinic") -> set[str]:
    """The modules of ``top`` that module ``name`` imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == top)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != top:
                continue
            for alias in node.names:  # `from . import stage` imports the submodule
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    return found


def unit(module: str, layers: dict[str, int]) -> str:
    """The entry of ``layers`` that ``module`` belongs to (longest match; the root only matches itself)."""
    matches = [k for k in layers if module == k or (("." in k) and module.startswith(k + "."))]
    if not matches:
        raise AssertionError(f"{module} has no layer in tests/test_layers.py LAYERS; add it")
    return max(matches, key=len)


def violations(src: Path, layers: dict[str, int], top: str = "clinic") -> tuple[list[str], list[list[str]]]:
    """(imports that go up a layer, cycles between units) of the package ``top`` under ``src``."""
    up, graph, _ = _walk(src, layers, top)
    return up, cycles(graph)


def peer_imports(src: Path, layers: dict[str, int], top: str = "clinic") -> list[str]:
    """Imports between two different packages of one layer (the base layer's loose modules, which
    everything uses, excepted): a helper two peers share goes down a layer instead."""
    return _walk(src, layers, top)[2]


def _walk(src: Path, layers: dict[str, int], top: str):
    files = module_files(src, top)
    packages = {name for name, path in files.items() if path.name == "__init__.py"}
    up, graph, peers = [], {}, []
    for name, path in files.items():
        here = unit(name, layers)
        for target in sorted(imports(name, path, set(files), top)):
            there = unit(target, layers)
            if layers[there] > layers[here]:
                up.append(f"{name} imports {target} (layer {layers[there]} above {layers[here]})")
            elif there != here and layers[there] == layers[here] and layers[here] > 0 and there in packages:
                peers.append(f"{name} imports {target} (peers in layer {layers[here]})")
            if there != here:
                graph.setdefault(here, set()).add(there)
    return up, graph, peers


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    for name in module_files(SRC):
        unit(name, LAYERS)


def test_no_import_goes_up_a_layer():
    up, _ = violations(SRC, LAYERS)
    assert not up, "imports against the layer order (" + " -> ".join(reversed(LAYER_NAMES)) + "):\n" + "\n".join(up)


def test_peer_packages_never_import_each_other():
    found = peer_imports(SRC, LAYERS)
    assert not found, "a package imports a peer of its own layer (move the shared code down a layer):\n" + "\n".join(found)


def test_no_import_cycle_between_packages():
    _, found = violations(SRC, LAYERS)
    assert not found, f"import cycles between packages/modules: {found}"


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_the_checker_sees_an_upward_function_level_import_and_a_cycle(tmp_path):
    # a package laid out like clinic: low.py, a mid package, top.py
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/low.py": "def f():\n    from .mid.a import g\n",  # lazy, and up two layers
        "pkg/mid/__init__.py": "",
        "pkg/mid/a.py": "from ..low import f\nfrom . import b\n",
        "pkg/mid/b.py": "from pkg.top import h\n",  # absolute, up one layer
        "pkg/top.py": "from .mid import a\n",
        "pkg/side.py": "from .top import h\n",
    })
    layers = {"pkg": 0, "pkg.low": 0, "pkg.mid": 1, "pkg.top": 2, "pkg.side": 2}
    up, found = violations(tmp_path, layers, top="pkg")
    assert sorted(up) == ["pkg.low imports pkg.mid.a (layer 1 above 0)", "pkg.mid.b imports pkg.top (layer 2 above 1)"]
    assert found == [["pkg.low", "pkg.mid", "pkg.top"]]
    # the same layer order without the two upward imports: clean (side -> top is within a layer)
    _write(tmp_path, {"pkg/low.py": "", "pkg/mid/b.py": ""})
    assert violations(tmp_path, layers, top="pkg") == ([], [])
    # a peer import: mid2 (a package in mid's layer) reaching into mid
    _write(tmp_path, {"pkg/mid2/__init__.py": "", "pkg/mid2/c.py": "from ..mid import a\n"})
    assert peer_imports(tmp_path, {**layers, "pkg.mid2": 1}, top="pkg") == [
        "pkg.mid2.c imports pkg.mid.a (peers in layer 1)"]
    import shutil

    shutil.rmtree(tmp_path / "pkg/mid2")
    # a module outside the table is reported, not skipped
    _write(tmp_path, {"pkg/new.py": ""})
    with pytest.raises(AssertionError, match="pkg.new has no layer"):
        violations(tmp_path, layers, top="pkg")


def test_no_module_above_400_lines():
    """A module that grows past 400 lines holds two concerns: split it along them."""
    long = {name: n for name, path in module_files(SRC).items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > 400}
    assert not long, f"modules above 400 lines: {long}"
