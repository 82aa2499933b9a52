"""A checkpoint is ``{"state_dict": ..., "config": ...}`` saved with torch.save and readable with
``torch.load(path, weights_only=True)``: the config holds only plain types, with the same ``Record``
an ONNX carries in its metadata."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from pipeline.artifacts import Kind, atomic_output, check_output, write_manifest
from pipeline.digest import sha256_file
from pipeline.errors import EdgepipeError
from pipeline.images import DIGITS, VAL_FRACTION, ImageSource, ModelInput, PreprocessFlags, open_source
from pipeline.model_weights import load_weights
from pipeline.modelspec import ModelCode, ModelSpec, build, channels_of, input_size, load_recorded, probe
from pipeline.preprocess import Preprocess
from pipeline.timm_models import timm_preprocess

DEFAULT_IMAGE_SIZE = 32  # the input size when neither --input-size nor the model says one
_CHECKPOINT_FIX = "pass a checkpoint written by 'edgepipe train' or a plain state dict saved with torch.save"


class TrainingImages(NamedTuple):  # the pool (trained on) and the held-out part, preprocessed
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


def make_config(
    model: str | ModelSpec,
    source: ImageSource,
    seed: int,
    shape: tuple[int | None, int, int] | None = None,
    preprocess: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], TrainingImages]:
    """The config a checkpoint carries (everything later stages need to rebuild and judge it), and its images
    at ``shape`` (C, H, W; C None: the data's own). The preprocessing recorded is that resize and the
    pool's channel mean/std, or ``preprocess`` (a model's own, timm's) as it is."""
    spec = model if isinstance(model, ModelSpec) else ModelSpec.parse(model)
    split = source.split(seed=seed, val_fraction=VAL_FRACTION)
    channels = (shape[0] if shape else None) or source.channels
    height, width = shape[1:] if shape else (DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE)
    plain = {**(preprocess or {"resize": [height, width]}), "mean": None, "std": None, "channels": channels}
    geometry = Preprocess.from_dict(plain)
    x_train, y_train = source.batches(geometry, split.pool).collect()
    x_val, y_val = source.batches(geometry, split.held_out).collect()
    mean, std = (preprocess["mean"], preprocess["std"]) if preprocess else channel_stats(x_train)
    final = dataclasses.replace(geometry, mean=tuple(mean), std=tuple(std))
    channels, height, width = (int(v) for v in x_train.shape[1:])
    config = {
        "model": spec.text,
        "model_spec": spec.to_json(),
        "model_args": {
            "num_classes": len(source.class_names),
            "in_chans": channels,
            "img_size": height if height == width else [height, width],
        },
        "input_shape": [channels, height, width],
        "preprocess": final.to_dict(),
        "class_names": list(source.class_names),
        "data": {"source": source.spec, "sha256": source.sha256, "count": len(source)},
        "split": split.record,
    }
    return config, TrainingImages(final.scale(x_train), y_train, final.scale(x_val), y_val)


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    std = np.maximum(images.std(axis=(0, 2, 3), dtype=np.float64), 1e-6)
    return images.mean(axis=(0, 2, 3), dtype=np.float64).tolist(), std.tolist()


def open_training_data(data: str) -> ImageSource:
    source = open_source(data)
    if not source.labelled:
        raise EdgepipeError(
            f"training needs labelled images, but {source.spec} has no labels ({source.kind})",
            fix="give class sub-folders, or an .npz with y",
        )
    return source


def model_for_data(
    spec: ModelSpec, data: str, seed: int, input_shape: tuple[int | None, int, int] | None = None
) -> tuple[Any, dict[str, Any], TrainingImages]:
    """The model ``spec`` names, built for ``data`` at ``input_shape``, else its own size, else
    DEFAULT_IMAGE_SIZE: (model, checkpoint config, images). One forward pass proves it, before training."""
    import torch  # only stages that build a model need it

    shape = tuple(input_shape) if input_shape else input_size(spec)
    source = open_training_data(data)

    def attempt(shape, preprocess=None):
        config, images = make_config(spec, source, seed, shape, preprocess)
        torch.manual_seed(seed)
        return build_model(config, spec), config, images

    model, config, images = attempt(shape)
    own = None if shape else input_size(model)
    preprocess = timm_preprocess(model, tuple(config["input_shape"][1:])) if spec.kind == "timm" else None
    if preprocess or (own and list(own) != config["input_shape"]):
        model, config, images = attempt(tuple(config["input_shape"]) if preprocess else own, preprocess)
    probe(model, tuple(config["input_shape"]))
    return model, config, images


def build_model(config: dict[str, Any], given: ModelSpec | None = None, trust_model_code: bool = False) -> Any:
    """The model a config names, with random weights; user code only as ``load_recorded`` allows."""
    spec = load_recorded(config.get("model_spec") or config["model"], given, trust_model_code)
    return build(spec, config["model_args"])


def check_model_code(path: str | Path, code: ModelCode) -> None:
    """Raise unless ``code`` allows the model an edgepipe checkpoint names; imports and builds nothing."""
    config = _config_in(_read(path))
    if config is not None:
        load_recorded(config.get("model_spec") or config["model"], code.given, code.trust)


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
    params = {key: config.get(key) for key in ("model", "model_spec", "input_shape")} | config.get("train", {})
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
    path: str | Path, model_name: str | ModelSpec | None = None, data: str | None = None, trust_model_code=False
):
    """Load an edgepipe checkpoint, or a plain state dict for ``model_name`` (on ``data``): (model, config).
    User code a checkpoint names is imported only when ``model_name`` names it again or ``trust_model_code``."""
    import torch  # a second to import: only commands that touch checkpoints pay for it

    path = Path(path)
    given = ModelSpec.parse(model_name) if isinstance(model_name, str) else model_name
    blob = _read(path)
    if (config := _config_in(blob)) is not None:
        state_dict = blob["state_dict"]
    elif isinstance(blob, dict) and blob and all(isinstance(v, torch.Tensor) for v in blob.values()):
        if given is None:
            raise EdgepipeError(
                f"{path} is a plain state dict with no model name",
                fix="pass --model NAME ('edgepipe models' lists them) or --model file.py:callable",
            )
        state_dict, config = blob, make_config(given, open_training_data(data or DIGITS), 0)[0]
    else:
        raise EdgepipeError(f"{path} holds no state dict", fix=_CHECKPOINT_FIX)
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
    return Path(path).suffix.lower() != ".safetensors" and _config_in(_read(path)) is not None


def model_from_weights(
    path: str | Path, spec: ModelSpec, input_shape: tuple[int, int, int] | None = None
) -> tuple[Any, dict[str, Any]]:
    """The model ``spec`` names with the weights in ``path``, knowing no data: (model, record). No dataset
    imposes channels or classes, so the weights decide; one forward pass gives the class count."""
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


def _read(path: str | Path) -> Any:
    """The checkpoint's contents: tensors and plain types only (weights_only), never objects."""
    import torch  # a second to import: only commands that touch checkpoints pay for it

    path = Path(path)
    if not path.is_file():
        raise EdgepipeError(f"checkpoint {path} does not exist", fix="pass the .pt file written by 'edgepipe train'")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise EdgepipeError(f"{path} is not a readable checkpoint ({reason})", fix=_CHECKPOINT_FIX)


def _config_in(blob: Any) -> dict[str, Any] | None:  # None: not an edgepipe checkpoint (a plain state dict)
    is_checkpoint = isinstance(blob, dict) and "state_dict" in blob and isinstance(blob.get("config"), dict)
    return blob["config"] if is_checkpoint else None


def config_of(path: str | Path) -> dict[str, Any]:
    """The config of an edgepipe checkpoint. Reading it builds no model, so it imports no user code."""
    config = _config_in(_read(path))
    if config is None:
        return load_checkpoint(path)[1]  # a plain state dict: says what is missing
    return {**config, "checkpoint_sha256": sha256_file(path)}


def model_input_of(path: str | Path, flags: PreprocessFlags | None = None) -> ModelInput:
    if Path(path).suffix.lower() == ".onnx":
        return ModelInput.of_onnx(path, flags)
    return ModelInput.of_config(config_of(path), flags, Path(path).name)
