"""Where a run's wall time goes: seconds per named phase, for ``summary.json``'s ``time_s``.

    clock = PhaseClock()
    with clock.phase("eval"):
        ...
    clock.seconds   # {"eval": 1.23}

``startup`` is measured from the process's own start (Linux: ``/proc/self/stat``; elsewhere: when this
module was first imported, which misses the interpreter's start and the imports before it).
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Callable, Iterator

#: Wall time (time.time()) when this module was first imported: the fallback for the process start.
_IMPORTED_AT = time.time()
_startup_taken = False


def process_start_time() -> float:
    """The wall-clock time (``time.time()`` scale) at which this process started."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of proc(5): starttime after boot
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])  # seconds since boot, 10 ms resolution
        return time.time() - (uptime - started)
    except (OSError, ValueError, IndexError, AttributeError):
        return _IMPORTED_AT


def startup_seconds() -> float:
    """Seconds from the process's start to now on the first call in a process (interpreter, imports, config:
    what ``adakd train`` does before training), 0.0 on later calls (a second run in the same process)."""
    global _startup_taken
    if _startup_taken:
        return 0.0
    _startup_taken = True
    return max(time.time() - process_start_time(), 0.0)


class PhaseClock:
    """Adds up wall seconds per phase name; nested phases are subtracted from the enclosing one."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.seconds: dict[str, float] = {}
        self._open: list[list[float]] = []  # per open phase: [seconds spent in phases nested inside it]

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        nested = [0.0]
        self._open.append(nested)
        t0 = self.clock()
        try:
            yield
        finally:
            spent = self.clock() - t0
            self._open.pop()
            self.add(name, spent - nested[0])
            if self._open:
                self._open[-1][0] += spent


#: time_s's phases in reading order (any other phase a clock measured follows them).
ORDER = ("startup", "setup", "teacher", "probe", "teacher_eval", "train_steps", "eval", "checkpoint")


def breakdown(measured: dict[str, float], total: float) -> dict[str, float]:
    """``time_s``: the ``measured`` seconds per phase in :data:`ORDER`, ``other`` (``total`` minus their sum:
    metrics, logs, checks), ``total``, and ``fixed_share = 1 - train_steps / total``."""
    measured = dict(measured)
    parts = {k: measured.pop(k) for k in ORDER if k in measured} | measured
    parts["other"] = max(total - sum(parts.values()), 0.0)
    out = {k: round(v, 3) for k, v in parts.items()}
    out["total"] = round(total, 3)
    out["fixed_share"] = round(1.0 - parts.get("train_steps", 0.0) / total, 4) if total > 0 else 0.0
    return out


def describe(time_s: dict[str, float]) -> str:
    """The log line of a ``time_s`` breakdown."""
    rest = ", ".join(f"{k} {v:.1f}" for k, v in time_s.items() if k not in ("total", "fixed_share", "train_steps"))
    return f"wall time {time_s['total']:.1f} s, {100 * time_s['fixed_share']:.1f}% outside the training steps: {rest}"


__all__ = ["PhaseClock", "process_start_time", "startup_seconds", "breakdown", "describe", "ORDER"]
