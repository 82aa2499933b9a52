from pathlib import Path

import click

import calibration
from pipeline.clitools import EdgepipeCommand, emit, force_option, json_option
from pipeline.progress import out


def config_of(checkpoint: str) -> dict:
    """The model config from a checkpoint, or from an exported .onnx's metadata."""
    if Path(checkpoint).suffix == ".onnx":
        from pipeline.onnxfile import load_onnx, onnx_config

        return onnx_config(load_onnx(checkpoint), checkpoint)
    from pipeline.train import load_checkpoint

    return load_checkpoint(checkpoint)[1]


@click.command("calibrate", cls=EdgepipeCommand)
@click.option("--checkpoint", required=True, metavar="CKPT|MODEL.onnx", help="The model to calibrate for: a checkpoint or an exported .onnx (its preprocessing and training split are used).")
@click.option("--data", default=None, metavar="digits|DIR|FILE.npz", help="Dataset to draw from. Default: the model's own training data (training split only).")
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
    from pipeline.artifacts import check_output

    check_output(output, force)
    calib_set = calibration.draw(config_of(checkpoint), data=data, num=num, seed=seed)
    path = calibration.save(output, calib_set, force=force)
    m = calib_set.manifest
    result = {"calibration": str(path), "count": m["count"], "count_per_class": m["count_per_class"], "source": m["source"],
              "seed": seed, "input_shape": m["input_shape"], "mean": m["mean"], "std": m["std"], "sha256": m["sha256"]}
    emit(result, as_json, lambda r: out.print(
        f"{r['calibration']}: {r['count']} images from the training split of {r['source']} "
        f"({min(r['count_per_class'].values())}-{max(r['count_per_class'].values())} per class), seed {r['seed']}"
    ))


COMMANDS = [calibrate_command]
