import click

from pipeline.commands import options
from pipeline.defaults import DEFAULT_MAX_DROP, DEFAULT_SWEEP_OUTPUT


@click.command("sweep", cls=options.EdgepipeCommand)
@click.option("--models", metavar="A,B", help="Zoo models to sweep, comma-separated.")
@click.option(
    "--models-file",
    type=click.Path(dir_okay=False),
    metavar="sweep.yaml",
    help="YAML with 'models:' (names, or {name, checkpoint|onnx, epochs}) and optional 'precisions:'/'targets:'.",
)
@options.precisions_option(
    "Precisions to build (default: the models file's, else fp32,fp16,int8).", metavar="fp32,fp16,int8"
)
@click.option(
    "--targets",
    metavar="sm_89,sm_87",
    help="Target GPUs by compute capability (default: every target a worker advertises).",
)
@click.option(
    "-o",
    "--output",
    default=DEFAULT_SWEEP_OUTPUT,
    metavar="DIR",
    help="Sweep directory: sweep.json, sweep.md and one run directory per model.",
)
@click.option(
    "--address",
    default="local",
    metavar="local|auto|HOST:PORT",
    help="local: embedded Ray on this machine (nothing to start); auto: the cluster running here (e.g. under 'ray job submit'); HOST:PORT: a cluster's head.",
)
@options.data_option(help="Dataset (default: digits). GPU workers that validate need it at the same path.")
@click.option("--epochs", type=int, help="Training epochs (default: each model's recipe).")
@click.option("--seed", default=0)
@options.batches_option("--batches", default="1,8", help="Batch sizes to bench.", dest="bench_batches")
@click.option("--bench-seconds", default=1.0, help="Timed seconds per artifact and batch.")
@options.max_drop_option(default=DEFAULT_MAX_DROP)
@click.option(
    "--retries", default=2, help="Retries of a cell whose worker or node dies (a build error is never retried)."
)
@click.option(
    "--strict", is_flag=True, help="Stop the sweep at the first failure instead of recording it and going on."
)
@options.force_option(help="Redo every stage and rebuild every engine, even those that are current.")
@options.json_option
def sweep_command(models, models_file, precisions, targets, output, as_json, **flags):
    """Build and measure every model x precision x target GPU, fanned out on Ray.

    Each model's target-independent stages run once on this machine (into DIR/<model>/, as
    'edgepipe run' does); each engine is built on a worker that advertises its target (Ray resource
    sm_XY), and validated and benched there when that worker has the GPU. Unchanged engines are
    reused, so a second sweep submits nothing. Exits 1 if a cell or a model failed.

    \b
    Example (embedded Ray: this machine builds the TensorRT-RTX targets ahead of time):
      edgepipe sweep --models se_resnet,cbam_resnet --precisions fp16,int8 --targets sm_89,sm_86 -o runs/sweep
    Example (a cluster; GPU machines joined with 'edgepipe worker --address HEAD:6379'):
      edgepipe sweep --models-file sweep.yaml --targets sm_89,sm_87,sm_80 --address HEAD:6379
    """
    # the sweep runs the stages (torch, onnx) and Ray: imported when the command runs, so --help starts at once.
    from pipeline.sweep import SweepSettings, as_list, sweep

    report = sweep(as_list(models), models_file, precisions, as_list(targets), output, SweepSettings(**flags))
    options.emit(report, as_json, _print, failed=not report["ok"])


def _print(report) -> None:
    # the report's rows are read through the sweep's adapter (onnx): imported once there is a report to print.
    from pipeline.sweep.report import to_markdown

    click.echo(to_markdown(report).split("\n## Models")[0])
    click.echo(f"Report: {report['folder']}/sweep.md and sweep.json")
