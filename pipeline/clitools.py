"""What every edgepipe command shares: one-line errors, --json output, common options."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, Callable

import click

from pipeline.errors import EdgepipeError

INTERRUPTED = 130


def _run_guarded(invoke: Callable[[], Any]) -> Any:
    """Run a command; a user error or Ctrl-C becomes one line on stderr and a non-zero exit."""
    try:
        return invoke()
    except EdgepipeError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Error: interrupted; nothing half-written was kept. Fix: run the same command again to resume.", err=True)
        sys.exit(INTERRUPTED)


class EdgepipeCommand(click.Command):
    def invoke(self, ctx: click.Context) -> Any:
        return _run_guarded(lambda: super(EdgepipeCommand, self).invoke(ctx))


class EdgepipeGroup(click.Group):
    command_class = EdgepipeCommand

    def invoke(self, ctx: click.Context) -> Any:
        return _run_guarded(lambda: super(EdgepipeGroup, self).invoke(ctx))


def quiet_libraries() -> None:
    """Keep third-party INFO chatter (ModelOpt, ONNX Runtime) off the terminal."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in ("modelopt", "onnxruntime", "polygraphy", "root"):
        logging.getLogger(name).setLevel(logging.WARNING)


def emit(result: dict[str, Any], as_json: bool, human: Callable[[dict[str, Any]], None]) -> None:
    """Print ``result`` as one JSON object on stdout, or in a human form."""
    if as_json:
        click.echo(json.dumps(result, sort_keys=True, default=str))
    else:
        human(result)


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout (for CI).")
force_option = click.option("--force", is_flag=True, help="Overwrite an existing output file.")
data_option = click.option(
    "--data", default=None, metavar="digits|DIR|FILE.npz",
    help="Dataset: 'digits' (bundled), an ImageFolder directory, or an .npz with arrays x and y. "
    "Default: the data the model was trained on.",
)
