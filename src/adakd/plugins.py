"""Your own models, losses, strategies and datasets, without editing adakd.

A plugin is a Python module that registers components when imported:

    # my_models.py
    from adakd.registry import MODELS, DISTILLERS
    @MODELS.register("my_net")
    def my_net(num_classes=10, in_channels=3, image_size=32): ...

Two ways to load it, used by every command (``train``, ``list``, ``bench``, ``sweep``):

* the config key ``imports: [my_package.my_models, ./my_models.py]`` (a dotted module name, or a
  ``.py`` file relative to the config file), or ``adakd --import my_package.my_models ...``;
* an installed package's entry point in the group ``adakd.plugins``
  (``[project.entry-points."adakd.plugins"] my_models = "my_package.my_models"``), loaded
  whenever adakd resolves a config or lists components.

Each module is imported once per process; a module that fails to import is one ConfigError
naming it and the error.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Iterable

from .errors import ConfigError

ENTRY_POINT_GROUP = "adakd.plugins"
_loaded: dict[str, ModuleType] = {}
_entry_points_loaded = False


def _import_file(path: Path) -> ModuleType:
    """Import a ``.py`` file as a module of its own (named after the file and its path)."""
    key = f"adakd_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"plugin {path} cannot be imported: it is not a Python file.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[key]
        raise
    return module


def import_plugin(name: str, base_dir: str | Path | None = None) -> ModuleType:
    """Import one plugin: a dotted module name or a ``.py`` path (relative to ``base_dir``)."""
    if name in _loaded:
        return _loaded[name]
    is_file = name.endswith(".py") or "/" in name or "\\" in name
    try:
        if is_file:
            path = Path(name).expanduser()
            if not path.is_absolute() and base_dir is not None:
                path = Path(base_dir) / path
            path = path.resolve()
            if not path.is_file():
                raise ConfigError(f"plugin file {path} not found: check `imports:` (paths are relative to the "
                                  "config file).")
            module = _import_file(path)
        else:
            module = importlib.import_module(name)
    except ConfigError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise ConfigError(f"plugin module {name!r} not found: install its package, put it on PYTHONPATH, or "
                              "give a .py path in `imports:`.") from None
        raise ConfigError(f"plugin {name!r} failed to import: {exc}.") from None
    except Exception as exc:  # the plugin's own error: name it, do not hide it
        raise ConfigError(f"plugin {name!r} failed to import: {type(exc).__name__}: {exc}.") from None
    _loaded[name] = module
    return module


def load_entry_points() -> list[str]:
    """Import every installed ``adakd.plugins`` entry point (once per process); their names."""
    global _entry_points_loaded
    names = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        names.append(ep.name)
        if not _entry_points_loaded:
            try:
                ep.load()
            except Exception as exc:
                raise ConfigError(f"adakd plugin {ep.name!r} ({ep.value}) failed to import: "
                                  f"{type(exc).__name__}: {exc}. Fix or uninstall its package.") from None
    _entry_points_loaded = True
    return names


def load_plugins(names: Iterable[str] = (), base_dir: str | Path | None = None) -> list[ModuleType]:
    """The installed entry points, then each of ``names`` (see the module docstring)."""
    load_entry_points()
    return [import_plugin(n, base_dir) for n in names]


__all__ = ["ENTRY_POINT_GROUP", "import_plugin", "load_entry_points", "load_plugins"]
