"""The edgepipe command line: a thin Click layer over the pipeline's Python API."""

from __future__ import annotations

import click

from pipeline import __version__
from pipeline.clitools import EdgepipeGroup, quiet_libraries
from pipeline.commands import all_commands


@click.group(cls=EdgepipeGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgepipe")
def main() -> None:
    """edgepipe: attention CNNs from PyTorch to validated FP16/INT8 ONNX models and TensorRT engines.

    \b
    Example, the whole pipeline on the bundled digits data:
      edgepipe run
    """
    quiet_libraries()


for command in all_commands():
    main.add_command(command)


if __name__ == "__main__":
    main()
