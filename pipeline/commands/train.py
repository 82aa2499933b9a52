import click

from pipeline import train as trainmod
from pipeline.artifacts import check_output
from pipeline.clitools import EdgepipeCommand, emit, force_option, json_option
from pipeline.data import DEFAULT_DATA
from pipeline.progress import out


@click.command("train", cls=EdgepipeCommand)
@click.option("--model", "model_name", default=trainmod.DEFAULT_MODEL, show_default=True, help="Zoo model ('edgepipe models'), or timm:NAME with timm installed.")
@click.option("--data", default=DEFAULT_DATA, show_default=True, metavar="digits|DIR|FILE.npz", help="Dataset: bundled digits, an ImageFolder directory, or an .npz with x and y.")
@click.option("--epochs", type=int, default=None, help="Epochs (default: the model's recipe).")
@click.option("--lr", type=float, default=None, help="Peak learning rate (default: the model's recipe).")
@click.option("--seed", default=0, show_default=True, help="Seed for the split, initialisation and batches.")
@click.option("--img-size", default=32, show_default=True, help="Input size images are resized to.")
@click.option("-o", "--output", required=True, metavar="DIR|FILE.pt", help="Folder (gets MODEL.pt) or checkpoint path.")
@force_option
@json_option
def train_command(model_name, data, epochs, lr, seed, img_size, output, force, as_json):
    """Train a zoo model and write a checkpoint with its config and held-out split.

    \b
    Example:
      edgepipe train --model cbam_resnet --data digits --epochs 20 -o runs/cbam
    """
    path = _checkpoint_path(output, model_name)
    check_output(path, force)  # fail before training, not after
    model, config = trainmod.train(model_name, data=data, epochs=epochs, seed=seed, lr=lr, image_size=img_size, progress=not as_json)
    trainmod.save_checkpoint(path, model, config, force=force)
    result = {"checkpoint": str(path), "model": model_name, **{k: config["train"][k] for k in ("val_top1", "epochs", "seconds")}}
    result["val_samples"] = len(config["split"]["val_indices"])
    emit(result, as_json, lambda r: out.print(f"{r['checkpoint']}: held-out top-1 {r['val_top1']:.2f}% on {r['val_samples']} images after {r['epochs']} epochs ({r['seconds']:.0f} s)"))


def _checkpoint_path(output: str, model_name: str):
    from pathlib import Path

    path = Path(output)
    if path.suffix in (".pt", ".pth"):
        return path
    return path / f"{model_name.replace(':', '_')}.pt"


COMMANDS = [train_command]
