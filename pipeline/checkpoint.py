"""Checkpoints: make, build, save and load one, and read a model's config from a checkpoint or an ONNX.

A checkpoint is ``{"state_dict": ..., "config": ...}`` saved with torch.save and readable with
``torch.load(path, weights_only=True)``: the config holds only plain types (model name and
arguments, input shape, normalization, class names, the data's sha256 and the held-out split).
``config_of`` is the one reader of that config, for a checkpoint or for the metadata that export
writes into an ONNX model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline import data as datamod
from pipeline.artifacts import Kind, atomic_output, check_output, sha256_file, write_manifest
from pipeline.errors import EdgepipeError
from pipeline.modelspec import ModelSpec, build, load_recorded
from pipeline.onnxfile import load_onnx, onnx_config

DEFAULT_MODEL = "se_resnet"  # the zoo model a run trains when given nothing else


def make_config(model: str | ModelSpec, dataset: datamod.Dataset, image_size: int, seed: int) -> dict[str, Any]:
    """The config a checkpoint carries: everything later stages need to rebuild and evaluate it.

    ``model`` is a zoo name or a parsed ``--model`` spec (zoo, timm:NAME, module:callable,
    file.py:callable); the spec is recorded so later stages rebuild exactly the user's model.
    """
    spec = model if isinstance(model, ModelSpec) else ModelSpec.parse(model)
    train_idx, val_idx = datamod.split_indices(dataset.labels, seed=seed)
    mean, std = datamod.channel_stats(dataset.images[train_idx])
    channels = dataset.images.shape[1]
    return {
        "model": spec.text,
        "model_spec": spec.to_json(),
        "model_args": {"num_classes": len(dataset.class_names), "in_chans": channels, "img_size": image_size},
        "input_shape": [channels, image_size, image_size],
        "mean": mean,
        "std": std,
        "class_names": list(dataset.class_names),
        "data": {"source": dataset.source, "sha256": dataset.sha256, "count": len(dataset)},
        "split": {"seed": seed, "val_fraction": datamod.VAL_FRACTION, "val_indices": [int(i) for i in val_idx]},
    }


def build_model(config: dict[str, Any], given: ModelSpec | None = None, trust_model_code: bool = False) -> Any:
    """The model a config names, with random weights; user code only as ``load_recorded`` allows."""
    spec = load_recorded(config.get("model_spec") or config["model"], given, trust_model_code)
    return build(spec, config["model_args"])


def model_info(model_name: str) -> dict[str, Any]:
    """The zoo's training recipe for a model (empty for timm and user models)."""
    spec = ModelSpec.parse(model_name)
    if spec.kind != "zoo":
        return {}
    import models  # the zoo registry imports torch: only asked when training

    try:
        return models.model_info(spec.target)
    except models.UnknownModelError as exc:
        raise EdgepipeError(str(exc).rstrip("."), fix="run 'edgepipe models' for the list")


def save_checkpoint(path: str | Path, model: Any, config: dict[str, Any], force: bool = False) -> Path:
    path = check_output(path, force)
    import torch  # a second to import: only commands that touch checkpoints pay for it

    with atomic_output(path) as tmp:
        torch.save({"state_dict": model.state_dict(), "config": config}, tmp)
    write_manifest(path, Kind.CHECKPOINT, inputs={"data": config["data"]["sha256"]}, params={"model": config["model"], **config.get("train", {})}, precision="fp32")
    return path


def load_checkpoint(path: str | Path, model_name: str | ModelSpec | None = None, data: str | None = None, seed: int = 0, image_size: int = 32,
                    trust_model_code: bool = False):
    """Load an edgepipe checkpoint, or a plain state dict for ``model_name``; returns (model, config).

    Only tensors and plain types are unpickled (weights_only), never arbitrary objects; user code a
    checkpoint names is imported only when ``model_name`` names it again or ``trust_model_code``.
    """
    import torch  # a second to import: only commands that touch checkpoints pay for it

    path = Path(path)
    if not path.is_file():
        raise EdgepipeError(f"checkpoint {path} does not exist", fix="pass the .pt file written by 'edgepipe train'")
    given = ModelSpec.parse(model_name) if isinstance(model_name, str) else model_name
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise EdgepipeError(f"{path} is not a readable checkpoint ({reason})", fix="pass a checkpoint written by 'edgepipe train' or a plain state dict saved with torch.save")
    if isinstance(blob, dict) and "state_dict" in blob and "config" in blob:
        state_dict, config = blob["state_dict"], blob["config"]
    elif isinstance(blob, dict) and blob and all(isinstance(v, torch.Tensor) for v in blob.values()):
        if given is None:
            raise EdgepipeError(f"{path} is a plain state dict with no model name", fix="pass --model NAME ('edgepipe models' lists them) or --model file.py:callable")
        dataset = datamod.load_dataset(data or datamod.DEFAULT_DATA, image_size=image_size)
        state_dict, config = blob, make_config(given, dataset, image_size, seed)
    else:
        raise EdgepipeError(f"{path} holds no state dict", fix="pass a checkpoint written by 'edgepipe train' or a plain state dict saved with torch.save")
    model = build_model(config, given, trust_model_code)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:3])[:240]
        raise EdgepipeError(f"{path} does not fit model {config['model']} with {len(config['class_names'])} classes: {detail}", fix="pass the --model and --data the checkpoint was trained with")
    model.eval()
    config.setdefault("checkpoint_sha256", sha256_file(path))
    return model, config


def config_of(path: str | Path) -> dict[str, Any]:
    """The model config of a checkpoint, or of an exported .onnx (its edgepipe metadata)."""
    if Path(path).suffix.lower() == ".onnx":
        return onnx_config(load_onnx(path), path)
    return load_checkpoint(path)[1]
