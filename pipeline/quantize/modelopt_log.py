"""ModelOpt, quietly: its output goes to a log file, and its failures become one-line errors.

ModelOpt and the ONNX Runtime sessions it starts write progress bars, Python logging and C++
messages to the terminal, straight to file descriptors 1 and 2. ``quiet_modelopt`` sends all of it
to a temporary log, so that ``edgepipe quantize`` prints only its own lines, and
``modelopt_error`` quotes the reason (or the log's last line) in one ``Error: ... Fix: ...``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import EdgepipeError

_LOGGERS = ("modelopt", "onnxruntime", "polygraphy", "root")


@contextlib.contextmanager
def quiet_modelopt() -> Iterator[Path]:
    """Send ModelOpt's and ONNX Runtime's output (print, tqdm, logging, C++) to a log file.

    Yields the log's path so that an error can quote its last line; the log is removed on exit.
    """
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    log = tempfile.NamedTemporaryFile(prefix="edgepipe-modelopt-", suffix=".log", delete=False)
    path = Path(log.name)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = []
    try:
        for stream in (sys.stdout, sys.stderr):
            try:
                fd = stream.fileno()
            except (AttributeError, OSError, ValueError):  # e.g. captured by a test runner
                continue
            saved.append((fd, os.dup(fd)))
            os.dup2(log.fileno(), fd)
        with contextlib.redirect_stdout(log_text := open(path, "a")), contextlib.redirect_stderr(log_text):
            previous = logging.root.manager.disable
            logging.disable(logging.WARNING)
            try:
                yield path
            finally:
                logging.disable(previous)
                log_text.close()
    finally:
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        log.close()
        with contextlib.suppress(OSError):
            path.unlink()


def last_line(log: Path) -> str | None:
    """The log's last non-blank line (cut to 200 characters), or None when it is empty or gone."""
    with contextlib.suppress(OSError):
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
        if lines:
            return lines[-1][:200]
    return None


def modelopt_error(what: str, exc: Exception, log: Path) -> EdgepipeError:
    """One clear error for a ModelOpt failure: its message's first line, else its type and the log's last line."""
    text = str(exc).strip()
    if text:
        reason = text.splitlines()[0][:200]
    else:
        tail = last_line(log)
        reason = type(exc).__name__ + (f" ({tail})" if tail else "")
    return EdgepipeError(
        f"ModelOpt {what} failed: {reason}",
        fix="check that the ONNX came from 'edgepipe export' (FP32, opset >= 13); exclude the failing op with --exclude-op",
    )
