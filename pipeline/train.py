"""Train an attention CNN on a dataset; the checkpoint it makes is written by ``pipeline.checkpoint``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.checkpoint import model_for_data, model_info
from pipeline.defaults import DEFAULT_MODEL
from pipeline.errors import EdgepipeError
from pipeline.images import DIGITS
from pipeline.model_weights import load_weights
from pipeline.modelspec import ModelSpec
from pipeline.progress import progress_bar
from pipeline.runner import predict
from pipeline.runtime.pytorch import TorchRunner

DEFAULT_EPOCHS = 20
DEFAULT_LR = 3e-3
BATCH_SIZE = 64
MAX_SHIFT = 2  # pixels of random translation at the zoo's 32x32, the only augmentation
SHIFT_FRACTION = 1 / 16  # at larger sizes, up to this share of the shorter side (14 px at 224x224)


def _shift(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random translation (replicated border), one offset per image: it keeps a class that depends on
    orientation (a rotation classifier's "90" and "270") what it is, which flips and rotations would not."""
    n, _, h, w = batch.shape
    shift = max(MAX_SHIFT, int(min(h, w) * SHIFT_FRACTION))
    padded = F.pad(batch, (shift,) * 4, mode="replicate")
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None])[:, None, :, None].expand(n, batch.shape[1], h, w + 2 * shift)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, None, :].expand(n, batch.shape[1], h, w)
    return out.gather(3, cols)


def train(
    model_name: str | ModelSpec = DEFAULT_MODEL,
    data: str = DIGITS,
    epochs: int | None = None,
    seed: int = 0,
    lr: float | None = None,
    input_shape: tuple[int, int, int] | int | None = None,
    progress: bool = True,
    weights: str | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train ``model_name`` (any --model spec) on ``data``; returns the model and its checkpoint config.
    ``input_shape``: (C, H, W) from --input-size (an int N: NxN in the data's channels). ``weights``
    start a fine-tune; with ``epochs=0`` they are taken as they are (no training)."""
    spec = model_name if isinstance(model_name, ModelSpec) else ModelSpec.parse(model_name)
    info = model_info(spec.text) if spec.kind == "zoo" else {}
    epochs = info.get("default_epochs", DEFAULT_EPOCHS) if epochs is None else epochs
    lr = lr or info.get("default_lr", DEFAULT_LR)
    if epochs < (0 if weights else 1):
        raise EdgepipeError(
            f"--epochs must be at least 1, got {epochs}",
            fix="pass --epochs 1 or more (0 only with --weights, to take them as they are)",
        )
    if isinstance(input_shape, int):
        input_shape = (None, input_shape, input_shape)  # --img-size N: in the data's own channels
    model, config, images = model_for_data(spec, data, seed, input_shape)
    if weights is not None:
        config["weights"] = {"file": str(Path(weights).resolve()), "sha256": load_weights(model, weights)}
    started = time.perf_counter()
    if epochs:
        x, y = torch.from_numpy(images.x_train), torch.from_numpy(images.y_train)
        _fit(model, x, y, epochs, lr, seed, f"train {spec.text}" if progress else None)
    model.eval()
    config["train"] = {
        "epochs": epochs,
        "lr": lr,
        "batch_size": BATCH_SIZE,
        "seconds": round(time.perf_counter() - started, 2),
        "val_top1": float((predict(TorchRunner(model), images.x_val).argmax(axis=1) == images.y_val).mean() * 100),
    }
    return model, config


def _fit(model, images: torch.Tensor, labels: torch.Tensor, epochs: int, lr: float, seed: int, description: str | None):
    """The training loop every model gets: AdamW, one-cycle schedule, label smoothing, random shifts."""
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = max(1, (len(labels) + BATCH_SIZE - 1) // BATCH_SIZE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
    with progress_bar(description or "train", epochs, enabled=description is not None) as bar:
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
