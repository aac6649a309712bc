"""``adakd bench`` arguments (see cli.py) -> the settings and cases of a bench."""
from __future__ import annotations

from typing import Any

import yaml

from ...errors import ConfigError
from .settings import SUITES, BenchCase, BenchSettings


def _yaml_arg(text: str, what: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what}: {text!r} is not valid YAML ({exc}); e.g. --losses \"{{kd: {{temperature: 4}}}}\".") from None


def parse_losses(text: str) -> dict[str, dict[str, Any]]:
    """``kd`` | ``[kd, at]`` | ``{dkd: {beta: 8}}`` -> {name: options}."""
    value = _yaml_arg(text, "--losses")
    if isinstance(value, str):
        return {value: {}}
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return {v: {} for v in value}
    if isinstance(value, dict) and all(isinstance(v, dict) or v is None for v in value.values()):
        return {k: dict(v or {}) for k, v in value.items()}
    raise ConfigError(f"--losses {text!r}: give a loss name, a list of names or a mapping name -> options.")


def settings_from_cli(args: Any) -> tuple[BenchSettings, list[BenchCase]]:
    """The settings and cases of ``adakd bench`` arguments (see cli.py)."""
    channels_last: bool | str = {"auto": "auto", "true": True, "false": False}[args.channels_last]
    kwargs = {}
    for key in ("teacher_kwargs", "student_kwargs"):
        kwargs[key] = _yaml_arg(getattr(args, key), "--" + key.replace("_", "-")) or {}
        if not isinstance(kwargs[key], dict):
            raise ConfigError(f"--{key.replace('_', '-')} must be a YAML mapping, e.g. \"{{widths: [16, 32, 64]}}\".")
    settings = BenchSettings(
        **kwargs, teacher=args.teacher, student=args.student, num_classes=args.num_classes, in_channels=args.in_channels,
        image_size=args.image_size, batch_sizes=list(args.batch_size), device=args.device, paths=tuple(args.paths),
        precision=args.precision, channels_last=channels_last, compile=args.compile, compile_mode=args.compile_mode,
        warmup=args.warmup, repeats=args.repeats, window=args.window, threads=args.threads, seed=args.seed,
        candidates=getattr(args, "candidates", True))
    if args.suite:
        return settings, SUITES[args.suite]
    options = _yaml_arg(args.strategy_options, "--strategy-options") or {}
    if not isinstance(options, dict):
        raise ConfigError(f"--strategy-options {args.strategy_options!r} must be a YAML mapping, e.g. \"{{routing: random}}\".")
    losses = parse_losses(args.losses)
    label = args.strategy if args.strategy != "standard" else "+".join(losses) or "ce"
    if args.strategy != "standard":
        label += f"({'+'.join(losses)})"
    if args.phase:
        label += f" {args.phase}"
    return settings, [BenchCase(label, losses=losses, strategy=args.strategy, options=options, phase=args.phase)]


__all__ = ["parse_losses", "settings_from_cli"]
