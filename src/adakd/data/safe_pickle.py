"""Unpickling of the CIFAR python archives that can only rebuild NumPy arrays.

The CIFAR files are pickles (dicts of bytes keys, lists and uint8 arrays). A general
``pickle.load`` would run any code a tampered file names; this unpickler resolves only the
few globals NumPy arrays need and refuses everything else.
"""
from __future__ import annotations

import io
import pickle
from typing import Any

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only NumPy arrays are expected)")
        if module.startswith("numpy.core."):
            module = "numpy._core." + module.removeprefix("numpy.core.")
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):  # NumPy 1.x has no numpy._core
            return super().find_class(module.replace("numpy._core.", "numpy.core."), name)


def load_array_pickle(data: bytes) -> Any:
    """Unpickle ``data`` (Python 2 or 3 pickles; byte strings stay bytes)."""
    return _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
