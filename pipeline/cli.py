"""The edgepipe command line: ``COMMANDS`` lists every command, imported only when it runs (Click's lazy group)."""

import difflib
import importlib

import click
from click.utils import make_default_short_help

from pipeline import __version__
from pipeline.commands.options import Guarded

# name -> its one-line help (the first line of its docstring); the command is NAME_command in pipeline.commands.NAME.
COMMANDS: dict[str, str] = {
    "bench": "Measure latency and throughput of the PyTorch reference and every artifact, side by side.",
    "build": "Build a TensorRT or TensorRT-RTX engine from an ONNX model, like trtexec.",
    "calibrate": "Draw a class-balanced calibration set from the model's training split.",
    "check": "Compare a run report (or a bench --json-out result) with a baseline; exit 1 listing every regression.",
    "export": "Export a checkpoint or weights file to ONNX and prove it against PyTorch (held-out images, else synthetic inputs).",
    "models": "List the model zoo: attention type, parameters and MACs.",
    "package": "Write a bundle that builds and proves a model's engines on the device, with no edgepipe there.",
    "quantize": "Make an FP16 or INT8 (Q/DQ) ONNX model and check it on the held-out split.",
    "run": "Train (or load), export, calibrate, quantize, build engines, validate and bench, in one run directory.",
    "sweep": "Build and measure every model x precision x target GPU, fanned out on Ray.",
    "train": "Train a model and write a checkpoint with its config, model spec and held-out split.",
    "validate": "Compare artifacts (ONNX at any precision, engines) with PyTorch on the held-out split.",
    "worker": "Join a Ray cluster as a sweep worker advertising this machine's target GPU.",
}


class LazyGroup(Guarded, click.Group):
    """A group whose commands are imported on first use, from ``COMMANDS``."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        return getattr(importlib.import_module(f"pipeline.commands.{name}"), f"{name}_command")

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if name and not name.startswith("-") and name not in COMMANDS:
            close = difflib.get_close_matches(name, COMMANDS, n=1)
            raise click.UsageError(
                f"No such command '{name}'" + (f" (did you mean '{close[0]}')" if close else ""), ctx
            )
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from the table, without importing any command."""
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        rows = [(name, make_default_short_help(COMMANDS[name], limit)) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgepipe")
def main() -> None:
    """edgepipe: attention CNNs from PyTorch to validated FP16/INT8 ONNX models and TensorRT engines.

    \b
    Example, the whole pipeline on the bundled digits data:
      edgepipe run
    """


if __name__ == "__main__":
    main()
