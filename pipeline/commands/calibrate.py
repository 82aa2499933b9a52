import click

from pipeline.commands.options import EdgepipeCommand, data_option, emit, force_option, json_option, preprocess_options
from pipeline.defaults import DEFAULT_CALIBRATION_SIZE
from pipeline.progress import out


@click.command("calibrate", cls=EdgepipeCommand)
@click.option(
    "--checkpoint",
    required=True,
    metavar="CKPT|MODEL.onnx",
    help="The model to calibrate for: a checkpoint, an edgepipe export, or any single-image-input .onnx (then --data is needed).",
)
@data_option(
    help="Images to draw from: an ImageFolder, a folder of images, an .npz with pixels x or model inputs (and y), or 'digits'. "
    "Default: an edgepipe model's own training data (training split only)."
)
@preprocess_options
@click.option("--num", default=DEFAULT_CALIBRATION_SIZE, help="Number of images (balanced over classes when labelled).")
@click.option("--seed", default=0, help="Seed of the draw.")
@click.option(
    "-o",
    "--output",
    required=True,
    metavar="CALIB.npz",
    help="Calibration set to write (a manifest is written beside it).",
)
@force_option()
@json_option
def calibrate_command(checkpoint, output, force, as_json, **drawing):
    """Draw a class-balanced calibration set from the model's training split.

    Seeded, and never from held-out images: from the data and split the model records, or from
    --data (a seeded split keeps 20% held out for validate, recorded in the set's manifest),
    through the model's preprocessing (recorded, then --preprocess, then the flags). The .npz
    feeds 'edgepipe quantize --int8 --calib' and 'build-engine --int8 --calib'.

    \b
    Examples:
      edgepipe calibrate --checkpoint runs/se/se_resnet.pt --num 512 -o runs/se/calib.npz
      edgepipe calibrate --checkpoint resnet.onnx --data photos/ --labels labels.txt --resize 256 --crop 224 \\
          --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --num 512 -o calib.npz
    """
    # drawing reads images and models (numpy, onnx): imported when the command runs, so --help starts at once.
    import calibration
    from pipeline.artifacts import check_output  # onnx

    check_output(output, force)  # fail before drawing, not after
    calib_set = calibration.draw_for(checkpoint, **drawing)  # data, preprocess, labels, workers, num, seed
    path = calibration.save(output, calib_set, force=force)
    recorded = ("count", "count_per_class", "source", "input_shape", "sha256", "split", "preprocess")
    result = {key: calib_set.manifest.get(key) for key in recorded}
    emit({**result, "calibration": str(path), "seed": drawing["seed"]}, as_json, _print)


def _print(r) -> None:
    per_class = r["count_per_class"]
    balance = f" ({min(per_class.values())}-{max(per_class.values())} per class)" if per_class else " (unlabelled)"
    held = f"; {r['split']['counts']['held_out']} images held out for validate"
    out.print(
        f"{r['calibration']}: {r['count']} images from the calibration pool of {r['source']}{balance}, seed {r['seed']}{held}",
        soft_wrap=True,
    )
