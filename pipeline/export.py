"""Export a checkpoint to ONNX and prove the export against PyTorch on the held-out split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import torch

from pipeline import __version__
from pipeline import data as datamod
from pipeline.artifacts import Kind, atomic_output, check_output, write_manifest
from pipeline.checkpoint import load_checkpoint
from pipeline.errors import EdgepipeError
from pipeline.metrics import evaluate
from pipeline.onnxfile import CONFIG_KEY, set_metadata
from pipeline.precision import Precision
from pipeline.runtime import predict
from pipeline.runtime.ort import OnnxRuntimeRunner
from pipeline.runtime.pytorch import TorchRunner

DEFAULT_OPSET = 17
# The TensorRT ONNX parser needs opset >= 13 for Q/DQ; the TorchScript exporter goes up to 20.
MIN_OPSET, MAX_OPSET = 13, 20
MAX_ABS_DIFF = 1e-4


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
) -> dict[str, Any]:
    """Write ``output`` from ``checkpoint`` and return the parity figures; fail if they are off."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise EdgepipeError(f"opset {opset} is not supported", fix=f"pass --opset between {MIN_OPSET} and {MAX_OPSET} (TensorRT needs >= 13 for INT8)")
    if batch < 1:
        raise EdgepipeError(f"--batch must be at least 1, got {batch}", fix="pass --batch 1 or more, or --dynamic-batch")
    output = check_output(output, force)
    model, config = load_checkpoint(checkpoint, model_name=model_name, data=data, trust_model_code=trust_model_code)
    dataset = datamod.load_for_config(config, data)
    x_val, y_val = datamod.split_of(config, dataset, "val")

    with atomic_output(output) as tmp:
        _export_to(model, config, tmp, opset, batch, dynamic_batch)
        with TorchRunner(model) as runner:
            reference = predict(runner, x_val)
        with OnnxRuntimeRunner(tmp) as runner:
            figures = evaluate(runner, x_val, reference, y_val)
        if figures["max_abs_diff"] > MAX_ABS_DIFF or figures["top1_agreement"] < 100.0:
            raise EdgepipeError(
                f"the ONNX model differs from PyTorch: max abs logit diff {figures['max_abs_diff']:.2e} (limit {MAX_ABS_DIFF:g}), "
                f"top-1 agreement {figures['top1_agreement']:.2f}%",
                fix="try another --opset; the model may use an op the exporter does not translate exactly",
            )
    write_manifest(
        output,
        Kind.ONNX,
        inputs={"checkpoint": config["checkpoint_sha256"]},
        params={"opset": opset, "batch": None if dynamic_batch else batch, "precision": "fp32"},
        precision=Precision.FP32,
        parity=figures,
    )
    return {
        "onnx": str(output),
        "model": config["model"],
        "opset": opset,
        "batch": "dynamic" if dynamic_batch else batch,
        "samples": int(len(y_val)),
        "top1_pytorch": figures.pop("reference_top1"),
        "top1_onnx": figures.pop("top1"),
        **figures,
    }


def _export_to(model: torch.nn.Module, config: dict[str, Any], path: Path, opset: int, batch: int, dynamic_batch: bool) -> None:
    example = torch.zeros(1 if dynamic_batch else batch, *config["input_shape"])
    dynamic_axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    try:
        # The TorchScript exporter: fast (well under a second for the zoo) and it keeps the
        # plain op set (Conv, ReduceMean, Sigmoid, Softmax, MatMul) TensorRT fuses best.
        torch.onnx.export(
            model, (example,), str(path), opset_version=opset, dynamo=False, do_constant_folding=True,
            input_names=["input"], output_names=["logits"], dynamic_axes=dynamic_axes,
        )
    except Exception as exc:  # the exporter raises many types for unsupported ops
        raise EdgepipeError(f"PyTorch could not export {config['model']} to ONNX: {str(exc).splitlines()[0][:200]}", fix="try another --opset")
    proto = onnx.load(str(path))
    set_metadata(proto, {
        CONFIG_KEY: json.dumps(config, sort_keys=True),
        "edgepipe.model": config["model"],
        "edgepipe.input_shape": json.dumps(config["input_shape"]),
        "edgepipe.mean": json.dumps(config["mean"]),
        "edgepipe.std": json.dumps(config["std"]),
        "edgepipe.class_names": json.dumps(config["class_names"]),
        "edgepipe.checkpoint_sha256": config["checkpoint_sha256"],
        "edgepipe.version": __version__,
    })
    proto.producer_name = "edgepipe"
    proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
