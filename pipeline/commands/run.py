import click

from pipeline.commands import options
from pipeline.defaults import DEFAULT_MAX_DROP


@click.command("run", cls=options.EdgepipeCommand)
@options.model_options(
    weights=True,
    help="The model to train: a zoo name (default: se_resnet when nothing else is given), timm:NAME, "
    "package.module:callable or path/to/file.py:callable. With --checkpoint: names the code the checkpoint was trained from.",
)
@options.input_size_option()
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Start from this checkpoint instead of training.")
@click.option(
    "--onnx",
    "onnx_model",
    type=click.Path(dir_okay=False),
    help="Start from this ONNX model: an edgepipe export, or any single-image-input ONNX (then give --data). No PyTorch reference then.",
)
@options.data_option(
    help="Dataset: 'digits' (the default), an ImageFolder, a folder of images, or an .npz with pixels x or model inputs (and y)."
)
@options.preprocess_options
@options.precisions_option("Comma-separated precisions to make and measure.", default="fp32,fp16,int8")
@click.option("-o", "--output", metavar="DIR", help="Run directory (default: runs/MODEL).")
@click.option(
    "--epochs",
    type=int,
    help="Training epochs (default: the model's recipe; with --weights: none, the weights as they are).",
)
@click.option("--seed", default=0)
@options.batches_option("--batches", default="1,8", help="Batch sizes to bench.", dest="bench_batches")
@click.option("--bench-seconds", default=1.0, help="Timed seconds per artifact and batch.")
@options.max_drop_option(default=DEFAULT_MAX_DROP)
@click.option("--no-engines", is_flag=True, help="Skip TensorRT engines even when a TensorRT flavour is installed.")
@click.option("--strict", is_flag=True, help="Stop at the first failed stage instead of recording it and going on.")
@options.force_option(help="Redo every stage, even those whose inputs have not changed.")
@options.json_option
def run_command(input_size, no_engines, as_json, **flags):
    """Train (or load), export, calibrate, quantize, build engines, validate and bench, in one run directory.

    Re-running reuses every stage whose inputs have not changed. Writes report.json and
    report.md (one row per artifact) into the run directory; exits 1 if any stage failed.
    From any ONNX with your images: the preprocessing given once is stored in every artifact,
    INT8 is calibrated on part of --data and validate judges on the held-out rest.

    \b
    Example (the default: se_resnet on the bundled digits, fp32/fp16/int8):
      edgepipe run
      edgepipe run --model cbam_resnet --precisions fp16,int8 -o runs/cbam
      edgepipe run --model mynets.py:make_net --model-arg width=32 --data photos/ --input-size 3x96x96 --epochs 10
      edgepipe run --model timm:seresnet18 --weights seresnet18.safetensors --data photos/
      edgepipe run --onnx resnet.onnx --data photos/ --labels labels.txt --resize 256 --crop 224 \\
          --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225
    """
    # a run trains and runs every stage (torch, onnx, ModelOpt): imported when the command runs, so --help starts at once.
    from pipeline.run import run

    report = run(input_shape=input_size.chw() if input_size else None, engines=not no_engines, **flags)
    failed = [name for name, stage in report["stages"].items() if stage["status"] in ("failed", "skipped")]
    options.emit(report, as_json, _print, failed=bool(failed))


def _print(report) -> None:
    # the run report reads the artifacts' records (onnx): imported once there is a report to print.
    from pipeline.report import to_markdown

    click.echo(to_markdown(report).split("\n## Machine")[0])
    click.echo(f"Report: {report['folder']}/report.md and report.json")
