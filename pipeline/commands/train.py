"""edgepipe train: a zoo model trained into a checkpoint with its config and held-out split."""

from pathlib import Path

import click

from pipeline.artifacts import check_output
from pipeline.checkpoint import DEFAULT_MODEL, save_checkpoint
from pipeline.commands.options import EdgepipeCommand, data_option, emit, force_option, json_option
from pipeline.data import DEFAULT_DATA
from pipeline.modelspec import ModelSpec
from pipeline.progress import out
from pipeline.train import train


@click.command("train", cls=EdgepipeCommand)
@click.option("--model", "model_name", default=DEFAULT_MODEL, show_default=True, metavar="NAME|timm:NAME|module:callable|file.py:callable",
              help="Zoo model ('edgepipe models'), a timm model (timm installed), or your own: a callable returning an nn.Module.")
@click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE", help="Keyword argument for the model's callable (repeatable).")
@click.option("--weights", default=None, type=click.Path(dir_okay=False), metavar="FILE", help="Start from these weights (.pt/.pth state dict, or .safetensors): a fine-tune.")
@data_option(default=DEFAULT_DATA, help="Dataset: bundled digits, an ImageFolder directory, or an .npz with x and y.")
@click.option("--epochs", type=int, default=None, help="Epochs (default: the model's recipe).")
@click.option("--lr", type=float, default=None, help="Peak learning rate (default: the model's recipe).")
@click.option("--seed", default=0, show_default=True, help="Seed for the split, initialisation and batches.")
@click.option("--img-size", default=32, show_default=True, help="Input size images are resized to.")
@click.option("-o", "--output", required=True, metavar="DIR|FILE.pt", help="Folder (gets MODEL.pt) or checkpoint path.")
@force_option
@json_option
def train_command(model_name, model_args, weights, data, epochs, lr, seed, img_size, output, force, as_json):
    """Train a model and write a checkpoint with its config, model spec and held-out split.

    \b
    Example:
      edgepipe train --model cbam_resnet --data digits --epochs 20 -o runs/cbam
      edgepipe train --model mynets.py:make_net --model-arg width=32 --data photos/ --img-size 96 -o runs/mine
    """
    spec = ModelSpec.parse(model_name, model_args)
    path = _checkpoint_path(output, spec)
    check_output(path, force)  # fail before training, not after
    model, config = train(spec, data=data, weights=weights, epochs=epochs, seed=seed, lr=lr, image_size=img_size, progress=not as_json)
    save_checkpoint(path, model, config, force=force)
    result = {"checkpoint": str(path), "model": spec.text, **{k: config["train"][k] for k in ("val_top1", "epochs", "seconds")}}
    result["val_samples"] = len(config["split"]["val_indices"])
    emit(result, as_json, lambda r: out.print(
        f"{r['checkpoint']}: held-out top-1 {r['val_top1']:.2f}% on {r['val_samples']} images after {r['epochs']} epochs ({r['seconds']:.0f} s)", markup=False,
    ))


def _checkpoint_path(output: str, spec: ModelSpec) -> Path:
    path = Path(output)
    if path.suffix in (".pt", ".pth"):
        return path
    name = spec.attr if spec.kind in ("module", "file") else spec.target
    return path / f"{name.replace(':', '_')}.pt"
