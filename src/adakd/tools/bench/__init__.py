"""``adakd bench``: training-step throughput of the eager baseline and the fast path, side by side.

    adakd bench                                   # KD resnet32x4 -> resnet8x4, batch 64, random CIFAR-shaped data
    adakd bench --batch-size 64 128 --out bench.json
    adakd bench --suite adaptive                  # SAKD, ABL (search, retrain) over KD; AEKT over DKD
    adakd bench --strategy sakd --losses "{at: {}}" --paths fast

For each case (teacher, student, losses, strategy and one of its phases) and batch size, the step
measured is the strategy's own ``Phase.step`` (what training runs), on two paths built in the same
process from the same weights:

* **eager**, the common KD code base: fp32, NCHW, a per-sample CPU transform like torchvision's
  ``RandomCrop(32, 4) + RandomHorizontalFlip + ToTensor + Normalize`` with ``torch.stack``
  collation, the default ``torch.optim.SGD``, and a host sync every step (``loss.item()`` and the
  accuracy, as its meters do);
* **fast**, adakd's training path (:mod:`adakd.engine.fast`): the data set on the device with
  batched augmentation (``DeviceLoader``), the precision and memory format training would take
  (``auto``: the fast-path probe of :mod:`adakd.engine.probe`, run afresh on this case and batch,
  never read from its cache; ``$ADAKD_PRECISION`` / ``$ADAKD_CHANNELS_LAST`` apply as in training),
  optionally ``torch.compile``, foreach/fused SGD, no host sync inside a timing window;
* with ``candidates`` (the default), the fast path also under every other precision x memory format
  the probe weighs (paths ``fp32 NCHW``, ``fp32 CL``, ``bf16 NCHW``, ``bf16 CL``), so the table shows
  whether the probe's short timing picked what the long one finds fastest.

The paths are timed interleaved (window by window), so a shared machine's load hits all alike.
images/s = batch x steps / seconds of a window; reported: the median over windows with the
quartiles and extremes; the data pipeline alone (images/s); the peak memory of a step (CUDA: peak
allocated; CPU: growth of the resident set, Linux ``VmHWM``, approximate); the ratio fast/eager;
and the first step's loss on both paths from the same weights and the same batch (the fast path
must agree within bf16 noise). Strategies not registered in this build are skipped with a note.
The environment records the CPU model, its AMX/AVX-512/AVX2 flags and torch's kernel level
(``torch.backends.cpu.get_cpu_capability()``), threads and torch version: bf16 is 3x faster than
fp32 on one CPU (AMX) and slower on another, so a number is only meaningful with its machine.

Modules, one job each: ``settings`` (cases, settings, suites, path specs), ``data`` (random data,
the eager per-sample pipeline), ``rig`` (one case's models, phase, optimiser and data, ready to
step), ``paths`` (eager/fast, the fast one probed per case), ``memory`` (peak memory), ``measure``
(timing, interleaved; the whole bench), ``environment`` (the machine), ``output`` (table, JSON,
progress), ``cli_args`` (``adakd bench`` arguments), ``reference`` (the reference code base's step,
imported from a user's checkout) and ``against`` (``adakd bench --against reference``: its step beside ours).
"""
from __future__ import annotations

from .against import format_against_table, run_against_reference
from .cli_args import parse_losses, settings_from_cli
from .data import PerSampleLoader, random_dataset
from .environment import environment
from .measure import measure_case, run_bench
from .memory import PeakMemory
from .output import format_table, progress_log, write_json
from .paths import case_paths, resolve_paths
from .rig import Rig
from .settings import CIFAR_MEAN, CIFAR_STD, PATHS, SUITES, BenchCase, BenchSettings, PathSpec

__all__ = [
    "BenchCase", "BenchSettings", "PathSpec", "SUITES", "PATHS", "CIFAR_MEAN", "CIFAR_STD", "random_dataset",
    "PerSampleLoader", "Rig", "resolve_paths", "case_paths", "PeakMemory", "measure_case", "run_bench", "environment",
    "format_table", "write_json", "progress_log", "parse_losses", "settings_from_cli", "run_against_reference",
    "format_against_table",
]
