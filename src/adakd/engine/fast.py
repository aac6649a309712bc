"""The fast training path: the switches that make a distillation step fast, in one place.

A KD step is dominated by the teacher's forward and the student's forward/backward on small
images. The common KD code bases run both in eager fp32 NCHW, with a per-sample CPU transform
and a host sync every step. What adakd does instead (each piece a config switch):

============================  ==========================================================  ==================
piece                         where                                                       default
============================  ==========================================================  ==================
data on the device, batched   ``data/loader.py`` DeviceLoader (gather + crop + flip +      always
augmentation                  normalise per batch, no per-sample Python)
bf16 autocast                 ``train.precision`` -> :func:`runtime.device.autocast`        ``auto``: measured
                                                                                          (engine/probe.py)
channels_last                 ``train.channels_last`` (models, distiller and batches)      ``auto``: measured
frozen teacher                eval mode, ``requires_grad=False``, forward under no_grad    always
                              (``Strategy.teacher_features``)
torch.compile                 ``train.compile``: :func:`compile_models` compiles the       off (opt-in: minutes
                              student's and teacher's ``forward_features``                 of compile on CPU)
CUDA graphs                   ``train.compile_mode=auto`` -> ``reduce-overhead`` on CUDA   with compile
                              when batch shapes are static (``data.drop_last``)
optimiser kernels             foreach (``engine/optim.py``); fused on CUDA                 always
                              (:func:`prefer_fused`)
no host sync per step         losses and accuracy summed on the device                     always
                              (``accumulator.EpochAccumulator``); ``.item()`` only for the
                              progress bar (every 25 steps) and the NaN check (every 50)
============================  ==========================================================  ==================

``auto`` precision and memory format are chosen per machine and setup by a probe of a few timed
training steps (:mod:`engine.probe`), not from a CPU flag: bf16 pays off very differently on CPUs
with AMX, with only avx512_bf16, and without either. Compile is not probed (its warm-up is minutes).

Measured on the project's 2-core Sapphire Rapids CPU (AMX), KD resnet32x4 -> resnet8x4, batch 64
(``adakd bench``; benchmarks/RESULTS.md): the fast path is 3.3-3.6x the eager fp32 NCHW step
(batch 64/128), ~4.5x with torch.compile once compiled.
The teacher forward under ``inference_mode`` was within noise (~4%) of ``no_grad``, and its
outputs cannot be saved for the student's backward without a copy, so the teacher keeps
``no_grad``. Fused SGD equals foreach SGD on this CPU; fused is used on CUDA only.
"""
from __future__ import annotations

import os
import types
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

#: torch.compile modes accepted by ``train.compile_mode`` ("auto" resolved by :func:`resolve_compile_mode`).
COMPILE_MODES = ("auto", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
#: The inductor cache directory adakd itself set (a user's own setting is never replaced).
_cache_we_set: str | None = None


def resolve_compile_mode(mode: str, device: torch.device, static_shapes: bool) -> str:
    """``auto`` -> ``reduce-overhead`` (CUDA graphs) on CUDA with static batch shapes, else ``default``."""
    if mode != "auto":
        return mode
    return "reduce-overhead" if device.type == "cuda" and static_shapes else "default"


def set_inductor_cache(path: str | os.PathLike[str]) -> Path:
    """Point torch.compile's on-disk cache (``TORCHINDUCTOR_CACHE_DIR``) at ``path`` unless the user
    chose one; return the directory in use. A later run in the same process moves adakd's own
    setting to its own directory."""
    global _cache_we_set
    current = os.environ.get(_CACHE_ENV)
    if current and current != _cache_we_set:
        return Path(current)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    os.environ[_CACHE_ENV] = _cache_we_set = str(path)
    return path


def compile_forward_features(model: nn.Module, mode: str = "default", backend: str = "inductor") -> nn.Module:
    """Compile ``model.forward_features`` (what every strategy calls) in place; idempotent.

    The compiled function is bound to the instance (``types.MethodType``), so ``copy.deepcopy``
    rebinds it to the copy, and ``state_dict`` is unchanged. ``model(x)`` (evaluation) stays eager.
    ``reduce-overhead`` also records CUDA graphs (static shapes only).
    """
    if getattr(model, "_adakd_compiled", None) == (mode, backend):
        return model
    options = {"backend": backend, "dynamic": False}
    if backend == "inductor":
        options["mode"] = mode
    compiled = torch.compile(type(model).forward_features, **options)
    model.forward_features = types.MethodType(compiled, model)  # type: ignore[method-assign]
    model._adakd_compiled = (mode, backend)  # type: ignore[assignment]
    return model


def compile_models(models: Iterable[nn.Module | None], device: torch.device, mode: str = "auto", *,
                   static_shapes: bool = True, cache_dir: str | os.PathLike[str] | None = None,
                   backend: str = "inductor") -> str:
    """Compile the ``forward_features`` of each model given (None skipped); return the mode used."""
    resolved = resolve_compile_mode(mode, device, static_shapes)
    if cache_dir is not None:
        set_inductor_cache(cache_dir)
    for model in models:
        if model is not None:
            compile_forward_features(model, resolved, backend)
    return resolved


def prefer_fused(optimizer: torch.optim.Optimizer, device: torch.device, force: bool = False
                 ) -> torch.optim.Optimizer:
    """The same optimiser with the fused kernel (one kernel for all parameters) on CUDA, or on
    any device with ``force``; unchanged where fused is not offered (or for a non-SGD/Adam/AdamW).
    Call before the first step: the state (momentum buffers) is not carried over."""
    kinds = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)
    if not (force or device.type == "cuda") or type(optimizer) not in kinds or optimizer.state:
        return optimizer
    groups = [{k: v for k, v in g.items() if k not in ("foreach", "fused")} for g in optimizer.param_groups]
    defaults = {k: v for k, v in optimizer.defaults.items() if k not in ("foreach", "fused", "params")}
    try:
        return type(optimizer)(groups, **defaults, fused=True)
    except (RuntimeError, ValueError, TypeError):  # e.g. a parameter dtype or device fused does not cover
        return optimizer
