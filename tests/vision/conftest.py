"""The vision tests run only where torchvision and timm import (the vision venv, docs/vision.md)."""
from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _missing_vision_stack() -> str | None:
    try:
        import torchvision  # noqa: F401
        import timm  # noqa: F401
    except Exception as exc:  # ImportError, or a torchvision built for another torch (RuntimeError)
        return (f"vision stack not importable here ({type(exc).__name__}: {str(exc).splitlines()[0][:100]}); "
                "run in the vision venv: .venv-vision/bin/python -m pytest tests/vision (docs/vision.md)")
    return None


SKIP_REASON = _missing_vision_stack()


def pytest_collection_modifyitems(config, items):
    if SKIP_REASON is None:
        return
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.skip(reason=SKIP_REASON))
