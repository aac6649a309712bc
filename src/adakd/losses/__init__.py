"""Distillation losses. Each module registers its distillers in ``adakd.registry.DISTILLERS``."""
import importlib

from .base import CompositeDistiller, DistillContext, Distiller, register_distiller

# One module per method; importing a module registers its distiller(s).
_METHOD_MODULES = [
    "kd", "dkd", "dist", "aekt",                       # logit-based (kd.py also holds "ls")
    "sp", "cc", "rkd", "pkt", "crd", "vid",            # relation-based (+ VID)
    "fitnet", "at", "nst", "ft", "ab", "fsp", "kdsvd", "ofd", "reviewkd",  # feature-based
]
for _module in _METHOD_MODULES:
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["CompositeDistiller", "DistillContext", "Distiller", "register_distiller"]
