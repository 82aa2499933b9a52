"""The builder's voice and its off switch: a logger that keeps messages, a progress monitor, Ctrl-C.

The builder calls back into Python only through the progress monitor, and it swallows exceptions
raised there; so the monitor records them and cancels the build, and ``Backend.build`` raises them
again once the builder has returned.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any


def make_logger(trt: Any, label: str) -> Any:
    class EdgepipeLogger(trt.ILogger):
        """Keeps the builder's messages; prints them to stderr only with ``verbose``."""

        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[tuple[Any, str]] = []
            self.verbose = False

        def log(self, severity, msg):
            self.messages.append((severity, msg))
            if self.verbose and severity <= trt.ILogger.INFO:
                print(f"[{label}] {msg}", file=sys.stderr)

        def clear(self):
            self.messages = []

        def errors(self) -> list[str]:
            return [m for s, m in self.messages if s <= trt.ILogger.ERROR]

        def last_error(self) -> str | None:
            errors = self.errors()
            return errors[-1].strip() if errors else None

    return EdgepipeLogger()


def progress_monitor(trt: Any, on_step: Callable[[str, int], None] | None) -> Any:
    if not hasattr(trt, "IProgressMonitor"):
        return None  # TensorRT 8.x: no monitor, so Ctrl-C waits for the build to end

    class CancellableMonitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.exception: BaseException | None = None

        def phase_start(self, phase_name, parent_phase, num_steps):
            pass

        def phase_finish(self, phase_name):
            pass

        def step_complete(self, phase_name, step):
            try:
                if self.exception is None and on_step is not None:
                    on_step(phase_name, step)
            except BaseException as exc:  # noqa: BLE001 - re-raised after the builder returns
                self.exception = exc
            return self.exception is None  # False cancels the build

    return CancellableMonitor()


@contextlib.contextmanager
def sigint_cancels(monitor: Any) -> Iterator[None]:
    """While building, Ctrl-C asks the progress monitor to cancel instead of being lost in C++."""
    if monitor is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def cancel(signum, frame):
        monitor.exception = monitor.exception or KeyboardInterrupt()

    previous = signal.signal(signal.SIGINT, cancel)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
