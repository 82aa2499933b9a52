"""edgepipe calibrate: a class-balanced calibration set from the model's training split."""

import click

import calibration
from pipeline.artifacts import check_output
from pipeline.checkpoint import config_of
from pipeline.commands.options import EdgepipeCommand, data_option, emit, force_option, json_option
from pipeline.progress import out


@click.command("calibrate", cls=EdgepipeCommand)
@click.option("--checkpoint", required=True, metavar="CKPT|MODEL.onnx", help="The model to calibrate for: a checkpoint or an exported .onnx (its preprocessing and training split are used).")
@data_option(help="Dataset to draw from. Default: the model's own training data (training split only).")
@click.option("--num", default=calibration.DEFAULT_NUM, show_default=True, help="Number of images (balanced over classes).")
@click.option("--seed", default=0, show_default=True, help="Seed of the draw.")
@click.option("-o", "--output", required=True, metavar="CALIB.npz", help="Calibration set to write (a manifest is written beside it).")
@force_option
@json_option
def calibrate_command(checkpoint, data, num, seed, output, force, as_json):
    """Draw a class-balanced calibration set from the model's training split.

    Images get the model's own preprocessing (input size, mean/std); held-out images are never
    drawn. The .npz feeds 'edgepipe quantize --int8 --calib' and TensorRT calibrators.

    \b
    Example:
      edgepipe calibrate --checkpoint runs/se/se_resnet.pt --num 512 -o runs/se/calib.npz
    """
    check_output(output, force)  # fail before drawing, not after
    calib_set = calibration.draw(config_of(checkpoint), data=data, num=num, seed=seed)
    path = calibration.save(output, calib_set, force=force)
    m = calib_set.manifest
    result = {"calibration": str(path), "count": m["count"], "count_per_class": m["count_per_class"], "source": m["source"],
              "seed": seed, "input_shape": m["input_shape"], "mean": m["mean"], "std": m["std"], "sha256": m["sha256"]}
    emit(result, as_json, lambda r: out.print(
        f"{r['calibration']}: {r['count']} images from the training split of {r['source']} "
        f"({min(r['count_per_class'].values())}-{max(r['count_per_class'].values())} per class), seed {r['seed']}", markup=False,
    ))
