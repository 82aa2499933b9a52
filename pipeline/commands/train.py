from pathlib import Path

import click

from pipeline.commands import options
from pipeline.defaults import DEFAULT_DATA, DEFAULT_MODEL
from pipeline.errors import EdgepipeError
from pipeline.progress import out


@click.command("train", cls=options.EdgepipeCommand)
@options.model_options(default=DEFAULT_MODEL, weights=True, trust=False)
@options.data_option(
    default=DEFAULT_DATA, help="Dataset: bundled digits, an ImageFolder directory, or an .npz with x and y."
)
@click.option(
    "--epochs", type=int, help="Epochs (default: the model's recipe; 0 with --weights: take them as they are)."
)
@click.option("--lr", type=float, help="Peak learning rate (default: the model's recipe).")
@click.option("--seed", default=0, help="Seed for the split, initialisation and batches.")
@options.input_size_option()
@click.option("--img-size", type=int, metavar="N", help="N x N in the data's channels (a shorthand for --input-size).")
@click.option("-o", "--output", required=True, metavar="DIR|FILE.pt", help="Folder (gets MODEL.pt) or checkpoint path.")
@options.force_option()
@options.json_option
def train_command(model, code, input_size, img_size, output, force, as_json, **training):
    """Train a model and write a checkpoint with its config, model spec and held-out split.

    \b
    Example:
      edgepipe train --model cbam_resnet --data digits --epochs 20 -o runs/cbam
      edgepipe train --model mynets.py:make_net --model-arg width=32 --data photos/ --input-size 3x96x96 -o runs/mine
    """
    # training runs torch: imported when the command runs, so --help starts at once.
    from pipeline.artifacts import check_output
    from pipeline.checkpoint import save_checkpoint  # torch
    from pipeline.train import train  # torch

    if input_size and img_size:
        raise EdgepipeError(
            "--input-size and --img-size both set the input size", fix="pass only --input-size [CxHxW | HxW]"
        )
    path = _checkpoint_path(output, model)
    check_output(path, force)  # fail before training, not after
    shape = input_size.chw() if input_size else img_size
    net, config = train(model, input_shape=shape, progress=not as_json, **training)  # data, weights, epochs, lr, seed
    save_checkpoint(path, net, config, force=force)
    result = {
        "checkpoint": str(path),
        "model": model.text,
        "input_shape": config["input_shape"],
        "weights_sha256": (config.get("weights") or {}).get("sha256"),
        **{k: config["train"][k] for k in ("val_top1", "epochs", "seconds")},
        "val_samples": config["split"]["counts"]["held_out"],
    }
    options.emit(result, as_json, _print)


def _print(r) -> None:
    out.print(
        f"{r['checkpoint']}: held-out top-1 {r['val_top1']:.2f}% on {r['val_samples']} images after {r['epochs']} epochs ({r['seconds']:.0f} s)"
    )


def _checkpoint_path(output: str, spec) -> Path:
    path = Path(output)
    if path.suffix in (".pt", ".pth"):
        return path
    name = spec.attr if spec.kind in ("module", "file") else spec.target
    return path / f"{name.replace(':', '_')}.pt"
