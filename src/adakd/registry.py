"""One registry pattern for every pluggable kind (models, datasets, distillers, strategies, plotters).

    MODELS = Registry("model")

    @MODELS.register("resnet8", description="CIFAR ResNet-8 (He et al. 2016)")
    def resnet8(num_classes=100, in_channels=3): ...

    MODELS.build("resnet8", num_classes=10)

Unknown names raise :class:`~adakd.errors.ConfigError` with the closest match.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from .errors import ConfigError


@dataclass
class Entry:
    name: str
    factory: Callable[..., Any]
    description: str = ""
    paper: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        out = {"name": self.name, "description": self.description}
        if self.paper:
            out["paper"] = self.paper
        out.update({k: v for k, v in self.extra.items() if isinstance(v, (str, int, float, bool, list))})
        return out


class Registry:
    """A name -> factory table for one kind of component."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._resolvers: dict[str, Callable[[str], None]] = {}

    def add_resolver(self, prefix: str, resolve: Callable[[str], None]) -> None:
        """Names starting with ``prefix`` (e.g. ``timm:``) that are not registered yet are handed to
        ``resolve(name)`` on first lookup, which may register them (families too large to list up front)."""
        self._resolvers[prefix] = resolve

    def _resolve(self, name: str) -> None:
        for prefix, resolve in self._resolvers.items():
            if name.startswith(prefix) and len(name) > len(prefix):
                resolve(name)
                return

    def register(self, name: str, description: str = "", paper: str = "", **extra: Any):
        """Decorator registering ``factory`` (a class or function) under ``name``."""

        def decorate(factory: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            doc = (factory.__doc__ or "").strip().splitlines()
            self._entries[name] = Entry(name, factory, description or (doc[0] if doc else ""), paper, extra)
            return factory

        return decorate

    @property
    def plural(self) -> str:
        return self.kind[:-1] + "ies" if self.kind.endswith("y") else self.kind + "s"

    def get(self, name: str) -> Entry:
        if name not in self._entries:
            self._resolve(name)
        if name not in self._entries:
            close = difflib.get_close_matches(name, list(self._entries), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            names = sorted(self._entries)
            shown = ", ".join(names[:30]) + (f", ... ({len(names)} in all)" if len(names) > 30 else "")
            raise ConfigError(f"unknown {self.kind} {name!r}.{hint} Known: {shown} (see `adakd list {self.plural}`).")
        return self._entries[name]

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name).factory(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str) and name not in self._entries:
            self._resolve(name)
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


MODELS = Registry("model")
DATASETS = Registry("dataset")
DISTILLERS = Registry("distiller")
STRATEGIES = Registry("strategy")
#: ``adakd plot`` plotters: fn(run_dir, out_dir) -> [written files] (tools/report/plots.py)
PLOTTERS = Registry("plotter")
