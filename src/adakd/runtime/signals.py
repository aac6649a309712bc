"""SIGTERM/SIGINT as a flag that a loop checks between steps (the trainer saves its state, then stops)."""
from __future__ import annotations

import signal
from typing import Any


class StopFlag:
    """Within ``with StopFlag() as stop:`` the first SIGTERM/SIGINT sets ``stop.signum``; a second one raises
    KeyboardInterrupt at once. The previous handlers come back on exit (outside the main thread: no-op)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopFlag":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # second signal: give up immediately
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
