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
from pipeline.modelspec import (
    ModelCode,
    ModelSpec,
    build,
    channels_of,
    input_size,
    load_recorded,
    load_weights,
    probe,
    timm_preprocess,
)
from pipeline.onnxfile import load_onnx, onnx_config
from pipeline.preprocess import Preprocess

DEFAULT_IMAGE_SIZE = 32  # the input size when neither --input-size nor the model says one


def make_config(
    model: str | ModelSpec, dataset: datamod.Dataset, seed: int, preprocess: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The config a checkpoint carries: everything later stages need to rebuild and evaluate it.

    ``model`` is a zoo name or a parsed ``--model`` spec (zoo, timm:NAME, module:callable,
    file.py:callable); the spec is recorded so later stages rebuild exactly the user's model. The
    input shape is the dataset's (loaded at the model's size). ``preprocess`` is a model's own
    preprocessing (timm's data config): its mean/std replace the data's, and it is recorded so
    every stage (and every exported ONNX) resizes and crops the way the model expects.
    """
    spec = model if isinstance(model, ModelSpec) else ModelSpec.parse(model)
    train_idx, val_idx = datamod.split_indices(dataset.labels, seed=seed)
    mean, std = datamod.channel_stats(dataset.images[train_idx])
    if preprocess:
        mean, std = list(preprocess["mean"]), list(preprocess["std"])
    channels, height, width = (int(v) for v in dataset.images.shape[1:])
    config = {
        "model": spec.text,
        "model_spec": spec.to_json(),
        "model_args": {
            "num_classes": len(dataset.class_names),
            "in_chans": channels,
            "img_size": height if height == width else [height, width],
        },
        "input_shape": [channels, height, width],
        "mean": mean,
        "std": std,
        "class_names": list(dataset.class_names),
        "data": {"source": dataset.source, "sha256": dataset.sha256, "count": len(dataset)},
        "split": {"seed": seed, "val_fraction": datamod.VAL_FRACTION, "val_indices": [int(i) for i in val_idx]},
    }
    if preprocess:
        config["preprocess"] = dict(preprocess)
    return config


def model_for_data(
    spec: ModelSpec, data: str, seed: int, input_shape: tuple[int | None, int, int] | None = None
) -> tuple[Any, dict[str, Any], datamod.Dataset]:
    """The model ``spec`` names, built for ``data`` at the size it takes: (model, checkpoint config, dataset).

    The size is ``input_shape`` (--input-size; channels None: the data's), else the model's own (a zoo ``img_size`` argument,
    timm's data config, or an ``input_size``/``img_size`` a user's module declares), else
    DEFAULT_IMAGE_SIZE. A timm model's own preprocessing (resize, centre crop, mean/std) is used and
    recorded. One forward pass at that size proves the model takes it, before any training.
    """
    import torch  # only stages that build a model need it

    shape = tuple(input_shape) if input_shape else input_size(spec)

    def attempt(shape, preprocess=None):
        size = tuple(shape[1:]) if shape else DEFAULT_IMAGE_SIZE
        geometry = Preprocess.from_dict(preprocess) if preprocess else None
        dataset = datamod.load_dataset(data, image_size=size, channels=shape[0] if shape else None, geometry=geometry)
        config = make_config(spec, dataset, seed, preprocess)
        torch.manual_seed(seed)
        return build_model(config, spec), config, dataset

    model, config, dataset = attempt(shape)
    own = None if shape else input_size(model)
    preprocess = timm_preprocess(model, tuple(config["input_shape"][1:])) if spec.kind == "timm" else None
    if preprocess or (own and list(own) != config["input_shape"]):
        model, config, dataset = attempt(tuple(config["input_shape"]) if preprocess else own, preprocess)
    probe(model, tuple(config["input_shape"]))
    return model, config, dataset


def build_model(config: dict[str, Any], given: ModelSpec | None = None, trust_model_code: bool = False) -> Any:
    """The model a config names, with random weights; user code only as ``load_recorded`` allows."""
    spec = load_recorded(config.get("model_spec") or config["model"], given, trust_model_code)
    return build(spec, config["model_args"])


def check_model_code(path: str | Path, code: ModelCode) -> None:
    """Raise unless ``code`` allows the model an edgepipe checkpoint names; imports and builds nothing."""
    blob = _read(Path(path))
    if isinstance(blob, dict) and isinstance(blob.get("config"), dict):
        load_recorded(blob["config"].get("model_spec") or blob["config"]["model"], code.given, code.trust)


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
    record = model_record(config)
    inputs = {
        "data": config["data"]["sha256"],
        **({"weights": record["weights_sha256"]} if record["weights_sha256"] else {}),
    }
    params = {
        "model": config["model"],
        "model_spec": config.get("model_spec"),
        "input_shape": config["input_shape"],
        **config.get("train", {}),
    }
    write_manifest(path, Kind.CHECKPOINT, inputs=inputs, params=params, precision="fp32", model=record)
    return path


def model_record(config: dict[str, Any]) -> dict[str, Any]:
    """What manifests and reports say about the PyTorch model: its spec, input shape and weights' sha256."""
    weights = config.get("weights") or {}
    return {
        "spec": config.get("model"),
        "model_spec": config.get("model_spec"),
        "input_shape": config.get("input_shape"),
        "weights": weights.get("file"),
        "weights_sha256": weights.get("sha256"),
    }


def load_checkpoint(
    path: str | Path,
    model_name: str | ModelSpec | None = None,
    data: str | None = None,
    seed: int = 0,
    image_size: int = 32,
    trust_model_code: bool = False,
):
    """Load an edgepipe checkpoint, or a plain state dict for ``model_name``; returns (model, config).

    Only tensors and plain types are unpickled (weights_only), never arbitrary objects; user code a
    checkpoint names is imported only when ``model_name`` names it again or ``trust_model_code``.
    """
    import torch  # a second to import: only commands that touch checkpoints pay for it

    path = Path(path)
    given = ModelSpec.parse(model_name) if isinstance(model_name, str) else model_name
    blob = _read(path)
    if isinstance(blob, dict) and "state_dict" in blob and "config" in blob:
        state_dict, config = blob["state_dict"], blob["config"]
    elif isinstance(blob, dict) and blob and all(isinstance(v, torch.Tensor) for v in blob.values()):
        if given is None:
            raise EdgepipeError(
                f"{path} is a plain state dict with no model name",
                fix="pass --model NAME ('edgepipe models' lists them) or --model file.py:callable",
            )
        dataset = datamod.load_dataset(data or datamod.DEFAULT_DATA, image_size=image_size)
        state_dict, config = blob, make_config(given, dataset, seed)
    else:
        raise EdgepipeError(
            f"{path} holds no state dict",
            fix="pass a checkpoint written by 'edgepipe train' or a plain state dict saved with torch.save",
        )
    model = build_model(config, given, trust_model_code)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:3])[:240]
        raise EdgepipeError(
            f"{path} does not fit model {config['model']} with {len(config['class_names'])} classes: {detail}",
            fix="pass the --model and --data the checkpoint was trained with",
        )
    model.eval()
    config.setdefault("checkpoint_sha256", sha256_file(path))
    return model, config


def is_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is an edgepipe checkpoint (state dict and config), not a plain weights file."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        return False
    blob = _read(path)
    return isinstance(blob, dict) and "state_dict" in blob and isinstance(blob.get("config"), dict)


def model_from_weights(
    path: str | Path, spec: ModelSpec, input_shape: tuple[int, int, int] | None = None
) -> tuple[Any, dict[str, Any]]:
    """The model ``spec`` names with the weights in ``path``, knowing no data: (model, record).

    The model is built from its own defaults and the --model-arg values alone (no dataset imposes
    channels or classes), so the weights decide. The size is ``input_shape`` (--input-size), else the
    model's own (timm's data config, a declared ``input_size``/``img_size``); one forward pass proves
    the model takes it and gives the class count. The record holds what an export states about the
    model: spec, weights and their sha256, input shape, classes, and timm's preprocessing.
    """
    path = Path(path)
    model = build(spec)
    sha256 = load_weights(model, path)
    model.eval()
    shape = tuple(input_shape) if input_shape else (input_size(spec) or input_size(model))
    if shape and shape[0] is None:  # --input-size HxW keeps the model's own channels
        shape = (channels_of(model) or 3, *shape[1:])
    if shape is None:
        raise EdgepipeError(
            f"{spec.text} declares no input size (no input_size or img_size attribute, no timm data config) and no --data gives one",
            fix="pass --input-size, e.g. --input-size 3x224x224",
        )
    classes = probe(model, shape)[1]
    record = {
        "model": spec.text,
        "model_spec": spec.to_json(),
        "input_shape": list(shape),
        "num_classes": int(classes),
        "weights": {"file": str(path), "sha256": sha256},
        "checkpoint_sha256": sha256,
    }
    if spec.kind == "timm":  # timm says how its models read images: every later stage uses it
        record["preprocess"] = timm_preprocess(model, tuple(shape[1:]))
    return model, record


def _read(path: Path) -> Any:
    """The checkpoint's contents: tensors and plain types only (weights_only), never objects."""
    import torch  # a second to import: only commands that touch checkpoints pay for it

    if not path.is_file():
        raise EdgepipeError(f"checkpoint {path} does not exist", fix="pass the .pt file written by 'edgepipe train'")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise EdgepipeError(
            f"{path} is not a readable checkpoint ({reason})",
            fix="pass a checkpoint written by 'edgepipe train' or a plain state dict saved with torch.save",
        )


def config_of(path: str | Path) -> dict[str, Any]:
    """The model config of a checkpoint, or of an exported .onnx (its edgepipe metadata).

    Reading a config builds no model, so it imports no user code: calibration needs only this.
    """
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return onnx_config(load_onnx(path), path)
    blob = _read(path)
    if isinstance(blob, dict) and "state_dict" in blob and isinstance(blob.get("config"), dict):
        return {**blob["config"], "checkpoint_sha256": sha256_file(path)}
    return load_checkpoint(path)[1]  # a plain state dict: says what is missing
