"""The builder's voice and its off switch: what the parser and builder say, as one clear error with a fix;
a logger that keeps messages, a progress monitor, Ctrl-C.

The builder calls back into Python only through the progress monitor and swallows exceptions raised
there: the monitor records them and cancels the build, and ``Backend.build`` raises them once it returns.
"""

from __future__ import annotations

import contextlib
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from pipeline.errors import EdgepipeError


def parse_error(backend: Any, path: Any, errors: list, log_errors: list[str]) -> EdgepipeError:
    """One clear error for the first parser failure: node, op, the parser's reason, a fix."""
    if not errors:
        reason = log_errors[-1] if log_errors else "no reason given"
        return EdgepipeError(
            f"{backend.display} cannot parse {path}: {reason}",
            fix="check the model with onnx.checker.check_model or 'polygraphy inspect model', or re-export it with 'edgepipe export'",
        )
    first = errors[0]
    node_name = _safe(lambda: first.node_name()) or "?"
    op = _safe(lambda: first.node_operator()) or "?"
    reason = (_safe(lambda: first.desc()) or str(first)).strip().splitlines()[0]
    detail = _first_real_error(log_errors)
    if detail and detail not in reason:
        reason = f"{reason}: {detail}"
    more = f" (+{len(errors) - 1} more error{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return EdgepipeError(
        f"{backend.display} cannot parse {path}: node '{node_name}' ({op}): {reason}{more}", fix=_parser_fix(op, reason)
    )


def _first_real_error(log_errors: list[str]) -> str | None:
    """The builder's own reason, without the parser's node banners and CPU-only CUDA noise."""
    for message in log_errors:
        line = message.strip().splitlines()[0] if message.strip() else ""
        if line and "ModelImporter" not in line and "cudaError" not in line and "catchCudaError" not in line:
            return re.sub(r" In \w+ at /\S+\)$", ")", line)
    return None


def _parser_fix(op: str, reason: str) -> str:
    text = reason.lower()
    if op == "DequantizeLinear" and ("int32" in text or "bias" in text):
        return "TensorRT takes no quantized bias: quantize with 'edgepipe quantize --int8' (bias stays float) instead of a tool that makes INT32 bias DequantizeLinear nodes"
    if op in ("QuantizeLinear", "DequantizeLinear") and ("zero" in text or "asymmetric" in text):
        return "TensorRT takes only symmetric quantization (zero point 0): quantize with 'edgepipe quantize --int8'"
    if "opset" in text or "version" in text:
        return "re-export with a newer opset ('edgepipe export --opset 17'); TensorRT needs opset >= 13 for Q/DQ"
    if "no importer registered" in text or "plugin" in text:
        return (
            f"TensorRT has no {op} op: re-export the model so it uses standard ONNX ops (or register a plugin for {op})"
        )
    return "re-export the model with 'edgepipe export' (opset 17), or replace the node's op with one TensorRT supports"


def build_fix(reason: str) -> str:
    text = reason.lower()
    if "turing" in text or "sm75" in text:
        return "Turing (compute capability 7.5) has no FP32 matrix multiply in TensorRT-RTX: build with --fp16 or --int8, or drop 7.5 from --computeCapability"
    if "workspace" in text:
        return "raise the workspace limit, e.g. --memPoolSize workspace:1024 (MiB), or drop --memPoolSize"
    return "run again with --verbose for the builder's log"


def _safe(getter: Callable[[], Any]) -> Any:
    try:
        return getter()
    except Exception:
        return None


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

        phase_start = phase_finish = lambda self, *args: None  # noqa: E731 - the interface's other callbacks

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
