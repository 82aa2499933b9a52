import click

from pipeline.commands.options import EdgepipeCommand, emit, json_option
from pipeline.deploy.targets import TARGETS
from pipeline.progress import out


@click.command("package", cls=EdgepipeCommand)
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--target", required=True, metavar="|".join(TARGETS), help="The device's TensorRT: " + ", ".join(
    f"{name} ({t.description})" for name, t in TARGETS.items()))  # fmt: skip
@click.option(
    "--data", required=True, metavar="digits|DIR|FILE.npz", help="Images; golden ones come from its held-out split."
)
@click.option("--labels", type=click.Path(dir_okay=False), help="Class names, one a line, in output order.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="The bundle folder to write.")
@click.option("--images", default=8, type=click.IntRange(1, 256), help="Golden held-out images.")
@click.option("--max-batch", default=32, type=click.IntRange(1), help="Largest batch of the engines' profile.")
@click.option("--triton-max-batch", type=click.IntRange(1), help="Triton's max_batch_size (default: --max-batch).")
@click.option("--dla", is_flag=True, help="Build for DLA core 0 with GPU fallback (Orin: jp5, jp6; FP16 only).")
@click.option("--force", is_flag=True, help="Replace an existing bundle.")
@json_option
def package_command(models, output, as_json, **options):
    """Write a bundle that builds and proves a model's engines on the device, with no edgepipe there.

    MODELS: the FP32 ONNX, then FP16/INT8 ONNX made from it. The bundle holds them, labels,
    preprocessing, build.sh (the target's trtexec flags), golden inputs/outputs of held-out images
    that Polygraphy checks, a DeepStream nvinfer config and a Triton model repository.

    \b
    Example:
      edgepipe package model.onnx model.fp16.onnx --target jp6 --data images.npz -o bundle/
    """
    # the bundle runs the model (numpy, onnx, ONNX Runtime): imported when the command runs, so --help starts at once.
    from pipeline.deploy.bundle import PackageOptions, package

    emit(package(list(models), output, PackageOptions(**options)), as_json, _print)


def _print(result) -> None:
    out.print(
        f"bundle {result['bundle']}: {', '.join(result['precisions'])} for {result['target']}, "
        f"{result['golden']['images']} golden images; on the device: see README.txt"
    )
