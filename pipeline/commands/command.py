"""The edgepipe command class and how a command ends.

- a user error (``EdgepipeError``), including a flag that a parser or a stage cannot use:
  one line ``Error: ... Fix: ...``, exit status 1;
- a command line Click cannot read (an unknown option, a missing argument, a value of the wrong
  type): one such line, exit status 2, Click's usage status;
- a result with a failed row, stage or regression: ``emit(..., failed=True)``, exit status 1;
- a package of an extra that is not installed (torch on a light device install): one line naming
  the extra that brings it, exit status 1;
- Ctrl-C: one line, exit status 130.
"""

import json
import logging
import os
from collections.abc import Callable
from typing import Any

import click

from pipeline.errors import EdgepipeError

FAILED = 1  # a user error, or a result with a failed row, stage or regression
INTERRUPTED = 130
# Click >= 8.2 shows a group's help through this error when it is run with no command.
_SHOWS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())

# The one table from a module a command imports to the extra (pyproject.toml) that installs it:
# module -> (package, extra). The core install (a device: build, validate, bench engines) has none of them.
MISSING_EXTRAS: dict[str, tuple[str, str]] = {
    "torch": ("torch", "train"),
    "sklearn": ("scikit-learn", "train"),
    "onnxruntime": ("onnxruntime", "quantize"),
    "modelopt": ("nvidia-modelopt", "quantize"),
    "onnx_graphsurgeon": ("onnx-graphsurgeon", "quantize"),
    "onnxconverter_common": ("onnxconverter-common", "quantize"),
    "onnxslim": ("onnxslim", "quantize"),
    "onnxscript": ("onnxscript", "quantize"),
    "matplotlib": ("matplotlib", "plot"),
    "timm": ("timm", "timm"),
    "torchvision": ("torchvision", "timm"),
    "ray": ("ray", "ray"),
}


def _guarded(call: Callable[[], Any], what: str = "this command") -> Any:
    """Run ``call``; any user error, bad flag, missing extra or Ctrl-C becomes one line on stderr and an exit status."""
    try:
        return call()
    except _SHOWS_HELP:
        raise
    except ModuleNotFoundError as exc:  # a package of an extra that is not installed: the extra's name
        module = (exc.name or "").split(".")[0]
        if module not in MISSING_EXTRAS:
            raise
        package, extra = MISSING_EXTRAS[module]
        error = EdgepipeError(f"{what} needs {package}, which is not installed", fix=f"pip install 'edgepipe[{extra}]'")
    except click.UsageError as exc:
        where = f"'{exc.ctx.command_path} --help'" if exc.ctx is not None else "--help"
        error = EdgepipeError(exc.format_message(), fix=f"see {where}")
        error.exit_code = exc.exit_code
    except EdgepipeError as exc:
        error = exc
    except KeyboardInterrupt:
        error = EdgepipeError("interrupted; nothing half-written was kept", fix="run the same command again to resume")
        error.exit_code = INTERRUPTED
    click.echo(f"Error: {error}", err=True)
    raise click.exceptions.Exit(error.exit_code)


class Guarded:
    """Mixin for Click commands and groups: flags and work both end in one line, never a traceback."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        parent = super()
        return _guarded(lambda: parent.parse_args(ctx, args))

    def invoke(self, ctx: click.Context) -> Any:
        parent = super()
        # Keep third-party INFO chatter (ModelOpt, ONNX Runtime) off the terminal.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        for name in ("modelopt", "onnxruntime", "polygraphy", "root"):
            logging.getLogger(name).setLevel(logging.WARNING)
        return _guarded(lambda: parent.invoke(ctx), ctx.command_path)


class EdgepipeCommand(Guarded, click.Command):
    """Every edgepipe command: ``@click.command("name", cls=EdgepipeCommand)``; ``--help`` shows every default."""

    def __init__(self, *args: Any, context_settings: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, context_settings={"show_default": True, **(context_settings or {})}, **kwargs)


def emit(
    result: dict[str, Any], as_json: bool, human: Callable[[dict[str, Any]], None], *, failed: bool = False
) -> None:
    """Print ``result`` as one JSON object on stdout, or in a human form; exit 1 when ``failed``.

    The one way a command reports that its result holds a failure (a failed row, stage or regression).
    """
    if as_json:
        click.echo(json.dumps(result, sort_keys=True, default=str))
    else:
        human(result)
    if failed:
        raise click.exceptions.Exit(FAILED)
