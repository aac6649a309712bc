"""The layer rule of the README's architecture screen: imports point downwards only.

Every ``import`` in src/adakd (module level and inside functions) is resolved to the adakd package it
names; a module may import from its own package and from the layers below its own, never above and
never a sibling of the same layer. The test fails on any upward arrow, naming file, line and target."""
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


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every adakd import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
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
