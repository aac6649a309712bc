"""User-facing errors.

Anything a user can cause (config, paths, data, checkpoints, shapes) raises
:class:`AdakdError` with one message that names the fix. The CLI prints the
message and exits with code 2 (no traceback unless ``--debug``).
"""
from __future__ import annotations


class AdakdError(Exception):
    """An error caused by user input; the message says how to fix it."""

    exit_code = 2


class ConfigError(AdakdError):
    """Malformed, unknown or ill-typed configuration."""


class DataError(AdakdError):
    """Missing, corrupt or ill-formatted dataset files."""


class CheckpointError(AdakdError):
    """A checkpoint that is missing, truncated, foreign, or does not fit the model."""


class ShapeError(AdakdError):
    """A method that cannot apply to the given teacher/student feature shapes."""


class CacheError(AdakdError):
    """A teacher-output cache that is foreign (other weights, data or augmentation), incomplete or corrupt."""


class ComponentError(AdakdError):
    """An error raised inside a user's own component (a plugin's model, loss, strategy or dataset)."""
