import click

from pipeline import run as runmod
from pipeline.clitools import EdgepipeCommand, emit, json_option


@click.command("run", cls=EdgepipeCommand)
@click.option("--model", "model_name", default=None, help="Zoo model to train (default: se_resnet when nothing else is given).")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, help="Start from this checkpoint instead of training.")
@click.option("--onnx", "onnx_model", type=click.Path(dir_okay=False), default=None, help="Start from this exported ONNX model (no PyTorch reference then).")
@click.option("--data", default=None, metavar="digits|DIR|FILE.npz", help="Dataset (default: digits).")
@click.option("--precisions", default="fp32,fp16,int8", show_default=True, help="Comma-separated precisions to make and measure.")
@click.option("-o", "--output", default=None, metavar="DIR", help="Run directory (default: runs/MODEL).")
@click.option("--epochs", type=int, default=None, help="Training epochs (default: the model's recipe).")
@click.option("--seed", default=0, show_default=True)
@click.option("--batches", default="1,8", show_default=True, help="Batch sizes to bench.")
@click.option("--bench-seconds", default=1.0, show_default=True, help="Timed seconds per artifact and batch.")
@click.option("--max-drop", default=str(runmod.DEFAULT_MAX_DROP), show_default=True, metavar="PTS|none",
              help="INT8 accuracy budget: points of top-1 INT8 may lose; sensitive nodes stay in higher precision until it holds. 'none': plain PTQ.")
@click.option("--no-engines", is_flag=True, help="Skip TensorRT engines even when a TensorRT flavour is installed.")
@click.option("--strict", is_flag=True, help="Stop at the first failed stage instead of recording it and going on.")
@click.option("--force", is_flag=True, help="Redo every stage, even those whose inputs have not changed.")
@json_option
def run_command(model_name, checkpoint, onnx_model, data, precisions, output, epochs, seed, batches, bench_seconds, max_drop, no_engines, strict, force, as_json):
    """Train (or load), export, calibrate, quantize, build engines, validate and bench, in one run directory.

    Re-running reuses every stage whose inputs have not changed. Writes report.json and
    report.md (one row per artifact) into the run directory; exits 1 if any stage failed.

    \b
    Example (the default: se_resnet on the bundled digits, fp32/fp16/int8):
      edgepipe run
      edgepipe run --model cbam_resnet --precisions fp16,int8 -o runs/cbam
    """
    report = runmod.run(
        model=model_name, checkpoint=checkpoint, onnx_model=onnx_model, data=data,
        precisions=tuple(p.strip() for p in precisions.split(",") if p.strip()), output=output,
        strict=strict, force=force, epochs=epochs, seed=seed, engines=not no_engines,
        bench_batches=_batches(batches), bench_seconds=bench_seconds, max_drop=_budget(max_drop),
    )
    emit(report, as_json, _print)
    failed = [name for name, stage in report["stages"].items() if stage["status"] in ("failed", "skipped")]
    if failed:
        raise click.exceptions.Exit(1)


def _budget(text: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        from pipeline.errors import EdgepipeError

        raise EdgepipeError(f"--max-drop '{text}' is not a number of points", fix="pass e.g. --max-drop 0.5, or --max-drop none for plain PTQ")
    return value


def _batches(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        from pipeline.errors import EdgepipeError

        raise EdgepipeError(f"--batches '{text}' is not a list of batch sizes", fix="pass e.g. --batches 1,8,32")
    return values


def _print(report) -> None:
    from pipeline.report import to_markdown

    click.echo(to_markdown(report).split("\n## Machine")[0])
    click.echo(f"Report: {report['folder']}/report.md and report.json")


COMMANDS = [run_command]
