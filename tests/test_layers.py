"""The layer rule of the README's architecture screen: imports point downwards only; and no import cycles.

Every ``import`` in src/adakd (module level and inside functions) is resolved to the adakd package it
names; a module may import from its own package and from the layers below its own, never above and
never a sibling of the same layer. The test fails on any upward arrow, naming file, line and target.

Inside a package the modules' imports form no cycle either (module level and inside functions alike;
imports under ``if TYPE_CHECKING:`` only serve annotations and are left out): a cycle is reported as
the chain of modules, each importing the next."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "adakd"

#: Bottom to top. One row may hold several packages; they must not import each other.
LAYERS: list[set[str]] = [
    {"errors", "registry", "options", "plugins", "config", "version"},  # the foundation: one package in effect
    {"runtime"},  # device, precision, seeding, distributed primitives
    {"models", "data"},
    {"losses"},
    {"strategies"},
    {"engine"},
    {"tools"},
    {"cli", "api", "__init__", "__main__"},
]
#: Rows whose members may import each other (the foundation; the entry points cli/api/__main__).
FREE_ROWS = {0, len(LAYERS) - 1}


def layer_of(unit: str) -> int:
    for index, names in enumerate(LAYERS):
        if unit in names:
            return index
    raise AssertionError(f"src/adakd/{unit} is in no layer of tests/test_layers.py: add it to LAYERS")


def unit_of(module: str) -> str:
    """``adakd.engine.trainer`` -> ``engine``; ``adakd`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_type_checking(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:``."""
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _nodes(tree: ast.AST, type_checking: bool) -> list[ast.AST]:
    """Every node of ``tree``; without ``type_checking``, not those inside an ``if TYPE_CHECKING:`` body."""
    out, todo = [], [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if not type_checking and _is_type_checking(node):
            todo += [node.test, *node.orelse]
        else:
            todo += list(ast.iter_child_nodes(node))
    return out


def imported_modules(path: Path, type_checking: bool = True) -> list[tuple[int, str]]:
    """(line, absolute module) of every adakd import in ``path`` (``type_checking``: also those under
    ``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out = []
    for node in sorted(_nodes(tree, type_checking), key=lambda n: getattr(n, "lineno", 0)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "adakd"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:  # from . import x, y: modules, or names of the package itself
                    folder = SRC.parent.joinpath(*target.split("."))
                    out += [(node.lineno, f"{target}.{a.name}" if (folder / a.name).is_dir()
                             or (folder / f"{a.name}.py").is_file() else target) for a in node.names]
                    continue
            else:
                target = node.module or ""
            if target.split(".")[0] == "adakd":
                out.append((node.lineno, target))
    return out


def violations() -> list[str]:
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        source = unit_of(module_name(path)) if path.parent != SRC else path.stem
        src_layer = layer_of(source)
        for line, target in imported_modules(path):
            dest = unit_of(target)
            if dest == "__init__" and target == "adakd":
                dest = "__init__"
            if dest == source:
                continue
            dest_layer = layer_of(dest)
            same_row_sibling = dest_layer == src_layer and src_layer not in FREE_ROWS
            if dest_layer > src_layer or same_row_sibling:
                bad.append(f"{path.relative_to(SRC.parent)}:{line}: {source} (layer {src_layer}) imports {target} "
                           f"(layer {dest_layer})")
    return bad


def test_imports_point_downwards_only():
    bad = violations()
    assert not bad, "imports that point upwards or sideways:\n" + "\n".join(bad)


def test_the_rule_catches_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: a runtime module importing the engine is reported."""
    fake = tmp_path / "adakd"
    (fake / "runtime").mkdir(parents=True)
    (fake / "engine").mkdir()
    (fake / "runtime" / "device.py").write_text("from ..engine.trainer import Trainer\n")
    (fake / "engine" / "trainer.py").write_text("from ..runtime.device import x\n")
    monkeypatch.setattr(__import__(__name__), "SRC", fake)
    found = violations()
    assert len(found) == 1 and "runtime (layer 1) imports adakd.engine.trainer (layer 5)" in found[0]


@pytest.mark.parametrize("layer", range(len(LAYERS)))
def test_every_package_is_placed(layer):
    for name in LAYERS[layer]:
        assert (SRC / name).is_dir() or (SRC / f"{name}.py").is_file(), f"LAYERS names a missing {name}"


# ------------------------------------------------------------------ cycles inside a package

def import_graph() -> dict[str, set[str]]:
    """Module -> the adakd modules it imports at run time (``if TYPE_CHECKING:`` imports left out). A name
    imported from a package (``from ..strategies import Phase``) is an edge to the package's ``__init__``."""
    modules = {module_name(path): path for path in sorted(SRC.rglob("*.py"))}
    return {name: {target for _, target in imported_modules(path, type_checking=False)
                   if target in modules and target != name} for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``, each importing the next) per strongly connected group of modules of
    more than one member (Tarjan's algorithm, then a shortest path back to the group's first module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    out = []
    for group in groups:
        start, members = group[0], set(group)
        paths = {w: [start, w] for w in sorted(graph[start]) if w in members}
        frontier = list(paths)
        while start not in paths:  # breadth first: the shortest way back to start
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w in members and w not in paths:
                        paths[w] = paths[v] + [w]
                        nxt.append(w)
            frontier = nxt
        out.append(paths[start])
    return sorted(out)


def test_no_import_cycle_inside_a_package():
    found = cycles(import_graph())
    assert not found, "import cycles (each module imports the next):\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_cycle_check_names_a_cycle_and_ignores_type_checking_imports(tmp_path, monkeypatch):
    """The checker itself: a <-> b through a function-local import is one cycle; c -> a under
    ``if TYPE_CHECKING:`` is none."""
    pkg = tmp_path / "adakd" / "engine"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("def f():\n    from .a import y\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import y\n"
                              "else:\n    from . import d\n")
    (pkg / "d.py").write_text("from .c import z\n")
    monkeypatch.setattr(__import__(__name__), "SRC", tmp_path / "adakd")
    assert cycles(import_graph()) == [["adakd.engine.a", "adakd.engine.b", "adakd.engine.a"],
                                      ["adakd.engine.c", "adakd.engine.d", "adakd.engine.c"]]
