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
naming it and the error. An error raised later inside a plugin's component (a model's forward, a
loss, a strategy's step, a dataset) is turned by :func:`component_error` into one ComponentError
naming the component, its file and line, and what to check (the CLI prints it; ``--debug``
shows the traceback).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Iterable

from .errors import AdakdError, ComponentError, ConfigError
from .registry import DATASETS, DISTILLERS, MODELS, STRATEGIES, Entry

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


# ----------------------------------------------------------------------------- errors inside a plugin
#: The base class of each kind of component (by qualified name: this module sits below them) -> its kind.
_KIND_OF_BASE = {"adakd.models.contract.ContractModel": "model", "adakd.losses.base.Distiller": "loss",
                 "adakd.strategies.base.Strategy": "strategy", "adakd.data.source.DatasetSource": "dataset"}
#: The registry kind -> the kind as the messages name it.
_KIND_OF_REGISTRY = {"model": "model", "distiller": "loss", "strategy": "strategy", "dataset": "dataset"}
#: What to check, per kind.
_FIX = {
    "model": "Check it against the feature contract (README, Extending: units, stage_ends, fc) and that it takes "
             "the in_channels x image_size x image_size input it is built for.",
    "loss": "Check its spot_loss/forward against the feature shapes it is built with (losses/base.py, Distiller).",
    "strategy": "Check its steps and phases against strategies/base.py (Strategy).",
    "dataset": "Check that it returns uint8 images [N, C, H, W], labels and a DatasetInfo (data/source.py).",
}


def _user_entries() -> dict[str, list[tuple[str, Entry]]]:
    """{source file: [(kind, entry)]} of every component registered from outside adakd, and the files of
    the plugins imported (which may hold the classes a registered function builds)."""
    files: dict[str, list[tuple[str, Entry]]] = {}
    for module in list(_loaded.values()):
        if getattr(module, "__file__", None):
            files.setdefault(str(Path(module.__file__).resolve()), [])
    for registry in (MODELS, DISTILLERS, STRATEGIES, DATASETS):
        for entry in registry.entries():
            module_name = getattr(entry.factory, "__module__", "") or ""
            if module_name == "adakd" or module_name.startswith("adakd."):
                continue
            path = getattr(sys.modules.get(module_name), "__file__", None)
            if path:
                files.setdefault(str(Path(path).resolve()), []).append((_KIND_OF_REGISTRY[registry.kind], entry))
    return files


def _frames(tb: TracebackType | None) -> list[Any]:
    out = []
    while tb is not None:
        out.append(tb.tb_frame)
        tb = tb.tb_next
    return out


def _builds(entry: Entry, cls: type) -> bool:
    """Whether ``entry`` registers ``cls`` or a function annotated to return it."""
    returns = getattr(entry.factory, "__annotations__", {}).get("return")
    return entry.factory is cls or returns is cls or returns == cls.__name__


def _module_file(module_name: str) -> str | None:
    path = getattr(sys.modules.get(module_name), "__file__", None)
    return str(Path(path).resolve()) if path else None


def component_error(exc: BaseException) -> ComponentError | None:
    """``exc`` as one message naming the plugin component it was raised in, or None when no plugin code
    is on its traceback (or it is already an AdakdError). The component is the innermost frame that runs
    a plugin file's code or a method of an object whose class a plugin defines (a user's model whose
    own layers fail inside adakd's or torch's code)."""
    if isinstance(exc, AdakdError):
        return None
    files = _user_entries()
    for frame in reversed(_frames(exc.__traceback__)):
        owner = frame.f_locals.get("self")
        code_file = str(Path(frame.f_code.co_filename).resolve())
        class_file = _module_file(type(owner).__module__) if owner is not None else None
        if code_file in files or class_file in files:
            break
    else:
        return None
    entries = files[code_file if code_file in files else class_file]
    kind = next((_KIND_OF_BASE[f"{c.__module__}.{c.__qualname__}"] for c in type(owner).__mro__
                 if f"{c.__module__}.{c.__qualname__}" in _KIND_OF_BASE), None) if owner is not None else None
    named = [(k, e) for k, e in entries if getattr(e.factory, "__code__", None) is frame.f_code
             or (owner is not None and _builds(e, type(owner)))]
    if kind is None and (named or len({k for k, _ in entries}) == 1):
        kind = (named or entries)[0][0]
    if not named:
        named = [(k, e) for k, e in entries if k == kind]
    name = f" {named[0][1].name!r}" if len(named) == 1 else ""
    function = f"{type(owner).__name__}.{frame.f_code.co_name}" if owner is not None else frame.f_code.co_name
    where = (f"{function}, {Path(code_file).name}:{frame.f_lineno}" if code_file in files
             else f"in {function}; {type(owner).__name__} is defined in {Path(class_file or '').name}")
    what = f"your {kind}{name}" if kind else "your plugin code"
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return ComponentError(f"{what} ({where}) raised {type(exc).__name__}{': ' + message if message else ''}. "
                          f"{_FIX.get(kind or '', 'Check that code.')} (--debug shows the traceback.)")


__all__ = ["ENTRY_POINT_GROUP", "import_plugin", "load_entry_points", "load_plugins", "component_error"]
