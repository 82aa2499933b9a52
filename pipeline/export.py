"""Export a checkpoint to ONNX and prove the export against PyTorch on the held-out split.

A plain weights file (a state dict in .pt/.pth, or .safetensors) with ``--model`` and no ``--data``
is exported from the model alone: proven on seeded synthetic inputs (and said so), and written
like any ONNX edgepipe did not train, with no data config, so later stages check it on the user's
images or on synthetic inputs as they would any model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from pipeline import __version__
from pipeline import data as datamod
from pipeline.artifacts import Kind, atomic_output, check_output, write_manifest
from pipeline.checkpoint import is_checkpoint, load_checkpoint, model_from_weights, model_record
from pipeline.defaults import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
from pipeline.errors import EdgepipeError
from pipeline.metrics import evaluate
from pipeline.modelspec import ModelSpec, probe
from pipeline.onnxfile import CONFIG_KEY, set_metadata
from pipeline.precision import Precision
from pipeline.preprocess import Preprocess
from pipeline.progress import info as say
from pipeline.runtime import predict
from pipeline.runtime.ort import OnnxRuntimeRunner
from pipeline.runtime.pytorch import TorchRunner

# The TensorRT ONNX parser needs opset >= 13 for Q/DQ; the TorchScript exporter goes up to 20.
MAX_ABS_DIFF = 1e-4
SYNTHETIC_COUNT, SYNTHETIC_SEED = 32, 0  # standard-normal inputs a weights file with no --data is proven on
SYNTHETIC_TEXT = f"{SYNTHETIC_COUNT} synthetic inputs (seeded)"
SYNTHETIC_HINT = "pass --data for your images"


def export(
    checkpoint: str | Path,
    output: str | Path,
    model_name: str | None = None,
    opset: int = DEFAULT_OPSET,
    batch: int = 1,
    dynamic_batch: bool = False,
    data: str | None = None,
    force: bool = False,
    trust_model_code: bool = False,
    input_shape: tuple[int, int, int] | None = None,
    dynamic_size: bool = False,
) -> dict[str, Any]:
    """Write ``output`` from ``checkpoint`` and return the parity figures; fail if they are off.

    ``input_shape`` (C, H, W) exports at another size than the checkpoint's (one forward pass
    first proves the model takes it); ``dynamic_size`` also leaves height and width open. A plain
    weights file with a timm or user-code ``model_name`` and no ``data`` is exported from the
    model alone (:func:`_export_weights`).
    """
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise EdgepipeError(
            f"opset {opset} is not supported",
            fix=f"pass --opset between {MIN_OPSET} and {MAX_OPSET} (TensorRT needs >= 13 for INT8)",
        )
    if batch < 1:
        raise EdgepipeError(
            f"--batch must be at least 1, got {batch}", fix="pass --batch 1 or more, or --dynamic-batch"
        )
    output = check_output(output, force)
    given = ModelSpec.parse(model_name) if isinstance(model_name, str) else model_name
    # A zoo model's plain state dict keeps meaning edgepipe's own data (the bundled digits by default).
    if data is None and given is not None and given.kind != "zoo" and not is_checkpoint(checkpoint):
        return _export_weights(checkpoint, output, given, opset, batch, dynamic_batch, input_shape, dynamic_size)
    model, config = load_checkpoint(checkpoint, model_name=model_name, data=data, trust_model_code=trust_model_code)
    if input_shape is not None and input_shape[0] is None:  # --input-size HxW keeps the checkpoint's channels
        input_shape = (config["input_shape"][0], *input_shape[1:])
    if input_shape is not None and list(input_shape) != config["input_shape"]:
        probe(model, tuple(input_shape))  # one line naming what the forward pass raised
        config = {**config, "input_shape": list(input_shape), **_resized_preprocess(config, input_shape)}
    dataset = datamod.load_for_config(config, data)
    x_val, y_val = datamod.split_of(config, dataset, "val")

    with atomic_output(output) as tmp:
        _export_to(model, config, tmp, opset, batch, dynamic_batch, dynamic_size, _checkpoint_metadata(config))
        figures = _parity(model, tmp, x_val, y_val)
    write_manifest(
        output,
        Kind.ONNX,
        inputs={"checkpoint": config["checkpoint_sha256"]},
        params={
            "opset": opset,
            "batch": None if dynamic_batch else batch,
            "precision": "fp32",
            **({"input_shape": config["input_shape"]} if input_shape is not None else {}),
            **({"dynamic_size": True} if dynamic_size else {}),
        },
        precision=Precision.FP32,
        parity=figures,
        model=model_record(config),
    )
    return {
        **_what_was_written(output, config["model"], opset, batch, dynamic_batch, config["input_shape"], dynamic_size),
        "weights_sha256": model_record(config)["weights_sha256"],
        "samples": int(len(y_val)),
        "checked_on": f"{len(y_val)} held-out images",
        "top1_pytorch": figures.pop("reference_top1"),
        "top1_onnx": figures.pop("top1"),
        **figures,
    }


def _export_weights(
    weights: str | Path,
    output: Path,
    spec: ModelSpec,
    opset: int,
    batch: int,
    dynamic_batch: bool,
    input_shape: tuple[int, int, int] | None,
    dynamic_size: bool,
) -> dict[str, Any]:
    """A plain weights file exported with no data: proven on seeded synthetic inputs, and said so.

    The ONNX records the model spec, the weights' sha256, the input shape and the class count, and
    (for timm) the model's preprocessing, but no data config: with no dataset there is no held-out
    split, so quantize, validate and build-engine treat it as any ONNX (the user's images, or
    synthetic inputs when none are given).
    """
    model, record = model_from_weights(weights, spec, input_shape)
    images = (
        np.random.default_rng(SYNTHETIC_SEED)
        .standard_normal((SYNTHETIC_COUNT, *record["input_shape"]))
        .astype(np.float32)
    )
    with atomic_output(output) as tmp:
        _export_to(model, record, tmp, opset, batch, dynamic_batch, dynamic_size, _weights_metadata(record))
        figures = _parity(model, tmp, images, None)
    say(f"The export is checked against PyTorch on {SYNTHETIC_TEXT}; {SYNTHETIC_HINT}")
    sha256 = record["weights"]["sha256"]
    write_manifest(
        output,
        Kind.ONNX,
        inputs={"weights": sha256},
        params={
            "opset": opset,
            "batch": None if dynamic_batch else batch,
            "precision": "fp32",
            "input_shape": record["input_shape"],
            **({"dynamic_size": True} if dynamic_size else {}),
            "checked_on": "synthetic",
        },
        precision=Precision.FP32,
        parity={**figures, "checked_on": SYNTHETIC_TEXT, "hint": SYNTHETIC_HINT},
        model={**model_record(record), "num_classes": record["num_classes"]},
    )
    return {
        **_what_was_written(output, record["model"], opset, batch, dynamic_batch, record["input_shape"], dynamic_size),
        "num_classes": record["num_classes"],
        "weights_sha256": sha256,
        "samples": SYNTHETIC_COUNT,
        "checked_on": SYNTHETIC_TEXT,
        "hint": SYNTHETIC_HINT,
        **figures,
    }


def _what_was_written(
    output: Path, model: str, opset: int, batch: int, dynamic_batch: bool, input_shape: list[int], dynamic_size: bool
) -> dict[str, Any]:
    """The head of export's result: the file, the model, and the shape it was exported with."""
    return {
        "onnx": str(output),
        "model": model,
        "opset": opset,
        "batch": "dynamic" if dynamic_batch else batch,
        "input_shape": input_shape,
        "dynamic_size": dynamic_size,
    }


def _parity(model: torch.nn.Module, onnx_path: Path, images: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
    """The ONNX model's logits against PyTorch's on ``images``; fail unless they match (diff and top-1)."""
    with TorchRunner(model) as runner:
        reference = predict(runner, images)
    with OnnxRuntimeRunner(onnx_path) as runner:
        figures = evaluate(runner, images, reference, labels)
    if figures["max_abs_diff"] > MAX_ABS_DIFF or figures["top1_agreement"] < 100.0:
        raise EdgepipeError(
            f"the ONNX model differs from PyTorch: max abs logit diff {figures['max_abs_diff']:.2e} (limit {MAX_ABS_DIFF:g}), "
            f"top-1 agreement {figures['top1_agreement']:.2f}%",
            fix="try another --opset; the model may use an op the exporter does not translate exactly",
        )
    return figures


def _checkpoint_metadata(config: dict[str, Any]) -> dict[str, str]:
    """What an export of an edgepipe checkpoint records: its whole config (data, split, classes) for later stages."""
    return {
        CONFIG_KEY: json.dumps(config, sort_keys=True),
        "edgepipe.model": config["model"],
        "edgepipe.input_shape": json.dumps(config["input_shape"]),
        "edgepipe.mean": json.dumps(config["mean"]),
        "edgepipe.std": json.dumps(config["std"]),
        "edgepipe.class_names": json.dumps(config["class_names"]),
        "edgepipe.checkpoint_sha256": config["checkpoint_sha256"],
        "edgepipe.model_spec": json.dumps(config.get("model_spec"), sort_keys=True),
        "edgepipe.weights_sha256": model_record(config)["weights_sha256"] or "",
    }


def _weights_metadata(record: dict[str, Any]) -> dict[str, str]:
    """What an export of a plain weights file records: the model, weights, shape and classes; no data config."""
    return {
        "edgepipe.model": record["model"],
        "edgepipe.model_spec": json.dumps(record["model_spec"], sort_keys=True),
        "edgepipe.weights_sha256": record["weights"]["sha256"],
        "edgepipe.input_shape": json.dumps(record["input_shape"]),
        "edgepipe.num_classes": str(record["num_classes"]),
        "edgepipe.checked_on": SYNTHETIC_TEXT,
    }


def _resized_preprocess(config: dict[str, Any], shape: tuple[int, int, int]) -> dict[str, Any]:
    """A recorded resize-and-crop (timm's) at a new size: the crop is the size, the resize keeps its ratio."""
    recorded = config.get("preprocess")
    if not recorded:
        return {}
    old_h, new_h, new_w = config["input_shape"][1], shape[1], shape[2]
    ratio = (recorded["resize"] if isinstance(recorded["resize"], int) else recorded["resize"][0]) / old_h
    resize = int(new_h * ratio) if new_h == new_w else [int(new_h * ratio), int(new_w * ratio)]
    return {"preprocess": {**recorded, "resize": resize, "crop": [new_h, new_w]}}


def _export_to(
    model: torch.nn.Module,
    config: dict[str, Any],
    path: Path,
    opset: int,
    batch: int,
    dynamic_batch: bool,
    dynamic_size: bool,
    metadata: dict[str, str],
) -> None:
    example = torch.zeros(1 if dynamic_batch else batch, *config["input_shape"])
    axes = {**({0: "batch"} if dynamic_batch else {}), **({2: "height", 3: "width"} if dynamic_size else {})}
    dynamic_axes = {"input": axes, "logits": {0: "batch"} if dynamic_batch else {}} if axes else None
    try:
        # The TorchScript exporter: fast (well under a second for the zoo) and it keeps the
        # plain op set (Conv, ReduceMean, Sigmoid, Softmax, MatMul) TensorRT fuses best.
        torch.onnx.export(
            model,
            (example,),
            str(path),
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes=dynamic_axes,
        )
    except Exception as exc:  # the exporter raises many types for unsupported ops
        raise EdgepipeError(
            f"PyTorch could not export {config['model']} to ONNX: {str(exc).splitlines()[0][:200]}",
            fix="try another --opset",
        )
    proto = onnx.load(str(path))
    set_metadata(proto, {**metadata, "edgepipe.version": __version__})
    if config.get("preprocess"):  # the model's own resize, crop and normalization, for every later stage
        Preprocess.from_dict(config["preprocess"]).store_in(proto)
    proto.producer_name = "edgepipe"
    proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
