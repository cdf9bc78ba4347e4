"""Stopping a training cleanly on SIGINT (Ctrl-C) or SIGTERM (what schedulers send before they kill).

The first signal is only noted: the loop finishes its step, every rank agrees to stop at the same
iteration, `latest` is saved and the run ends with TrainingInterrupted (exit status 128 + the signal's
number). A second signal stops at once with StoppedAtOnce, leaving the last saved checkpoint as it was."""
from __future__ import annotations

import signal
import threading

from allspark.errors import StoppedAtOnce

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """While entered (on the main thread), SIGINT and SIGTERM set `signum` instead of raising; the second one
    raises StoppedAtOnce. The previous handlers come back on exit."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise StoppedAtOnce(signum)
        self.signum = signum

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

