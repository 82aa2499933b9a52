"""Train an attention CNN from the zoo, or load one from a checkpoint or a plain state dict.

A checkpoint is ``{"state_dict": ..., "config": ...}`` saved with torch.save and readable with
``torch.load(path, weights_only=True)``: the config holds only plain types (model name and
arguments, input shape, normalization, class names, the data's sha256 and the held-out split).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import models
from pipeline import data as datamod
from pipeline.artifacts import atomic_output, check_output, sha256_file, write_manifest
from pipeline.errors import EdgepipeError
from pipeline.metrics import top1
from pipeline.progress import progress_bar
from pipeline.runners import TorchRunner, predict

DEFAULT_MODEL = "se_resnet"
DEFAULT_EPOCHS = 20
DEFAULT_LR = 3e-3
BATCH_SIZE = 64
MAX_SHIFT = 2  # pixels of random translation, the only augmentation


def make_config(model_name: str, dataset: datamod.Dataset, image_size: int, seed: int) -> dict[str, Any]:
    """The config a checkpoint carries: everything later stages need to rebuild and evaluate it."""
    train_idx, val_idx = datamod.split_indices(dataset.labels, seed=seed)
    mean, std = datamod.channel_stats(dataset.images[train_idx])
    channels = dataset.images.shape[1]
    return {
        "model": model_name,
        "model_args": {"num_classes": len(dataset.class_names), "in_chans": channels, "img_size": image_size},
        "input_shape": [channels, image_size, image_size],
        "mean": mean,
        "std": std,
        "class_names": list(dataset.class_names),
        "data": {"source": dataset.source, "sha256": dataset.sha256, "count": len(dataset)},
        "split": {"seed": seed, "val_fraction": datamod.VAL_FRACTION, "val_indices": [int(i) for i in val_idx]},
    }


def build_model(config: dict[str, Any]) -> torch.nn.Module:
    try:
        return models.create(config["model"], **config["model_args"])
    except models.UnknownModelError as exc:
        raise EdgepipeError(str(exc).rstrip("."), fix="run 'edgepipe models' for the list")


def _shift(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random translation by up to MAX_SHIFT pixels, one offset per image."""
    n, _, h, w = batch.shape
    padded = F.pad(batch, (MAX_SHIFT,) * 4, mode="replicate")
    dx = torch.randint(0, 2 * MAX_SHIFT + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * MAX_SHIFT + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None])[:, None, :, None].expand(n, batch.shape[1], h, w + 2 * MAX_SHIFT)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, None, :].expand(n, batch.shape[1], h, w)
    return out.gather(3, cols)


def train(
    model_name: str = DEFAULT_MODEL,
    data: str = datamod.DEFAULT_DATA,
    epochs: int | None = None,
    seed: int = 0,
    lr: float | None = None,
    image_size: int = 32,
    progress: bool = True,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train ``model_name`` on ``data``; returns the model and its checkpoint config."""
    info = _model_info(model_name)
    epochs = epochs or info.get("default_epochs", DEFAULT_EPOCHS)
    lr = lr or info.get("default_lr", DEFAULT_LR)
    if epochs < 1:
        raise EdgepipeError(f"--epochs must be at least 1, got {epochs}", fix="pass --epochs 1 or more")
    dataset = datamod.load_dataset(data, image_size=image_size)
    config = make_config(model_name, dataset, image_size, seed)
    x_train, y_train = datamod.split_of(config, dataset, "train")
    x_val, y_val = datamod.split_of(config, dataset, "val")

    torch.manual_seed(seed)
    model = build_model(config)
    generator = torch.Generator().manual_seed(seed)
    images, labels = torch.from_numpy(x_train), torch.from_numpy(y_train)
    steps_per_epoch = max(1, (len(labels) + BATCH_SIZE - 1) // BATCH_SIZE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)

    started = time.perf_counter()
    with progress_bar(f"train {model_name}", epochs, enabled=progress) as bar:
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(len(labels), generator=generator)
            total_loss = 0.0
            for start in range(0, len(labels), BATCH_SIZE):
                batch = order[start : start + BATCH_SIZE]
                loss = F.cross_entropy(model(_shift(images[batch], generator)), labels[batch], label_smoothing=0.05)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total_loss += loss.item() * len(batch)
            bar.advance(f"epoch {epoch + 1} loss {total_loss / len(labels):.3f}")
    model.eval()
    config["train"] = {
        "epochs": epochs,
        "lr": lr,
        "batch_size": BATCH_SIZE,
        "seconds": round(time.perf_counter() - started, 2),
        "val_top1": top1(predict(TorchRunner(model), x_val), y_val),
    }
    return model, config


def _model_info(model_name: str) -> dict[str, Any]:
    if model_name.startswith("timm:"):
        return {}
    try:
        return models.model_info(model_name)
    except models.UnknownModelError as exc:
        raise EdgepipeError(str(exc).rstrip("."), fix="run 'edgepipe models' for the list")


def save_checkpoint(path: str | Path, model: torch.nn.Module, config: dict[str, Any], force: bool = False) -> Path:
    path = check_output(path, force)
    with atomic_output(path) as tmp:
        torch.save({"state_dict": model.state_dict(), "config": config}, tmp)
    write_manifest(path, "checkpoint", inputs={"data": config["data"]["sha256"]}, params={"model": config["model"], **config.get("train", {})})
    return path


def load_checkpoint(path: str | Path, model_name: str | None = None, data: str | None = None, seed: int = 0, image_size: int = 32):
    """Load an edgepipe checkpoint, or a plain state dict for ``model_name``; returns (model, config).

    Only tensors and plain types are unpickled (weights_only), never arbitrary objects.
    """
    path = Path(path)
    if not path.is_file():
        raise EdgepipeError(f"checkpoint {path} does not exist", fix="pass the .pt file written by 'edgepipe train'")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise EdgepipeError(f"{path} is not a readable checkpoint ({reason})", fix="pass a checkpoint written by 'edgepipe train' or a plain state dict saved with torch.save")
    if isinstance(blob, dict) and "state_dict" in blob and "config" in blob:
        state_dict, config = blob["state_dict"], blob["config"]
        if model_name and model_name != config["model"]:
            raise EdgepipeError(f"{path} is a checkpoint for model {config['model']}, not {model_name}", fix=f"drop --model or pass --model {config['model']}")
    elif isinstance(blob, dict) and blob and all(isinstance(v, torch.Tensor) for v in blob.values()):
        if not model_name:
            raise EdgepipeError(f"{path} is a plain state dict with no model name", fix="pass --model NAME ('edgepipe models' lists them)")
        _model_info(model_name)
        dataset = datamod.load_dataset(data or datamod.DEFAULT_DATA, image_size=image_size)
        state_dict, config = blob, make_config(model_name, dataset, image_size, seed)
    else:
        raise EdgepipeError(f"{path} holds no state dict", fix="pass a checkpoint written by 'edgepipe train' or a plain state dict saved with torch.save")
    model = build_model(config)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:3])[:240]
        raise EdgepipeError(f"{path} does not fit model {config['model']} with {len(config['class_names'])} classes: {detail}", fix="pass the --model and --data the checkpoint was trained with")
    model.eval()
    config.setdefault("checkpoint_sha256", sha256_file(path))
    return model, config
