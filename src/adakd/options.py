"""Typed options of pluggable components (losses, strategies), checked before anything is built.

A loss's options are its constructor's keyword parameters; :func:`options_model` turns that
signature (annotations and defaults) into a strict pydantic model, so ``losses.kd.temprature``
or ``losses.kd.temperature: hot`` is reported at config time with a close-match suggestion,
not when the teacher has already trained. A strategy declares its options as a pydantic model
itself (``Strategy.Options``); :func:`check_options` validates a mapping against either kind.

One case rule for every options model: a choice among names (a ``Literal`` of strings, optional or
not) accepts any case and is stored in its declared spelling (``routing: Random`` -> ``"random"``);
every other string (paths, component names) is taken as written.

    model = options_model(KD.__init__, skip={"student", "teacher"}, name="kd")
    check_options(model, {"temprature": 4}, where="losses.kd")   # ConfigError: ... Did you mean 'temperature'?
"""
from __future__ import annotations

import difflib
import functools
import inspect
import typing
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, ValidationError, create_model, model_validator

from .errors import ConfigError


def _choices(annotation: Any) -> tuple[str, ...]:
    """The string values of the ``Literal`` in ``annotation`` (through Optional/Union/Annotated); () if none."""
    if typing.get_origin(annotation) is typing.Literal:
        return tuple(v for v in typing.get_args(annotation) if isinstance(v, str))
    return tuple(v for arg in typing.get_args(annotation) for v in _choices(arg))


class StrictOptions(BaseModel):
    """Base of every options model: unknown keys are errors; choices are case-insensitive (module docstring)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    @model_validator(mode="before")
    @classmethod
    def _declared_spelling(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for key, value in data.items():
            field = cls.model_fields.get(key) if isinstance(value, str) else None
            if field is None:
                continue
            spelling = {c.lower(): c for c in _choices(field.annotation)}
            out[key] = spelling.get(value.lower(), value)
        return out


@functools.lru_cache(maxsize=None)
def options_model(factory: Callable[..., Any], skip: frozenset[str] = frozenset(), name: str = "") -> type[BaseModel]:
    """A strict pydantic model of ``factory``'s keyword parameters (minus ``skip``, ``self``, ``*args``/``**kw``).

    Unannotated parameters accept any value; parameters without a default are required."""
    try:
        hints = typing.get_type_hints(factory)
    except Exception:  # an annotation that cannot be resolved: accept any value there
        hints = {}
    fields: dict[str, Any] = {}
    for param in inspect.signature(factory).parameters.values():
        if param.name in skip or param.name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = hints.get(param.name, Any)
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (annotation, default)
    return create_model(f"{name or factory.__qualname__}Options", __base__=StrictOptions, **fields)


def check_options(model: type[BaseModel], options: Any, where: str) -> BaseModel:
    """``options`` validated by ``model``, or one ConfigError naming each bad key (``where.key``) and the fix."""
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise ConfigError(f"{where} must be a mapping of options, got {options!r}.")
    try:
        return model.model_validate(options)
    except ValidationError as exc:
        known = sorted(model.model_fields)
        lines = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                lines.append(f"{where}.{key}: unknown option.{hint} Options: {', '.join(known) or 'none'}.")
            elif err["type"] == "missing":
                lines.append(f"{where}.{key}: required.")
            else:
                lines.append(f"{where}.{key}: {err['msg']} (got {err.get('input')!r}).")
        raise ConfigError("invalid options:\n  " + "\n  ".join(lines)) from None


def option_defaults(model: type[BaseModel]) -> dict[str, Any]:
    """{option: default} of a model (required options are left out)."""
    return {k: f.get_default(call_default_factory=True) for k, f in model.model_fields.items() if not f.is_required()}


__all__ = ["StrictOptions", "options_model", "check_options", "option_defaults"]
