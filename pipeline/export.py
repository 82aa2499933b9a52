"""Export a checkpoint to ONNX and prove the export against PyTorch on the held-out split."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from pipeline import __version__
from pipeline.artifacts import Kind, atomic_output, check_output, write_manifest
from pipeline.checkpoint import is_checkpoint, load_checkpoint, model_from_weights, model_record
from pipeline.defaults import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
from pipeline.errors import EdgepipeError
from pipeline.fidelity import Fidelity
from pipeline.images import ModelData, ModelInput, Record
from pipeline.modelspec import ModelSpec, probe
from pipeline.onnxfile import set_metadata
from pipeline.onnxinfo import SYNTHETIC_COUNT
from pipeline.precision import Precision
from pipeline.preprocess import Preprocess
from pipeline.progress import info as say
from pipeline.runtime import predict
from pipeline.runtime.ort import OnnxRuntimeRunner
from pipeline.runtime.pytorch import TorchRunner

MAX_ABS_DIFF = 1e-4  # of the ONNX model's logits from PyTorch's
SYNTHETIC_SEED = 0  # of the standard-normal inputs a weights file with no --data is proven on
SYNTHETIC_TEXT = f"{SYNTHETIC_COUNT} synthetic inputs (seeded)"
SYNTHETIC_HINT = "pass --data for your images"


@dataclass(frozen=True)
class ExportSettings:
    model_name: str | ModelSpec | None = None
    opset: int = DEFAULT_OPSET
    batch: int = 1
    dynamic_batch: bool = False
    data: str | None = None
    force: bool = False
    trust_model_code: bool = False
    input_shape: tuple[int, int, int] | None = None
    dynamic_size: bool = False

    def __post_init__(self) -> None:
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise EdgepipeError(
                f"opset {self.opset} is not supported",
                fix=f"pass --opset between {MIN_OPSET} and {MAX_OPSET} (TensorRT needs >= 13 for INT8)",
            )
        if self.batch < 1:
            raise EdgepipeError(
                f"--batch must be at least 1, got {self.batch}", fix="pass --batch 1 or more, or --dynamic-batch"
            )

    def params(self, input_shape: list[int] | None = None) -> dict[str, Any]:  # what the manifest records
        return {
            "opset": self.opset,
            "batch": None if self.dynamic_batch else self.batch,
            "precision": "fp32",
            **({"input_shape": input_shape} if input_shape is not None else {}),
            **({"dynamic_size": True} if self.dynamic_size else {}),
        }


def export(checkpoint: str | Path, output: str | Path, **options: Any) -> dict[str, Any]:
    """Write ``output`` from ``checkpoint`` and return the parity figures; fail if they are off.
    ``options``: the fields of ``ExportSettings``."""
    settings = ExportSettings(**options)
    output = check_output(output, settings.force)
    given = ModelSpec.parse(settings.model_name) if isinstance(settings.model_name, str) else settings.model_name
    # A zoo model's plain state dict keeps meaning edgepipe's own data (the bundled digits by default).
    if settings.data is None and given is not None and given.kind != "zoo" and not is_checkpoint(checkpoint):
        return _export_weights(checkpoint, output, given, settings)
    model, config = load_checkpoint(
        checkpoint, model_name=settings.model_name, data=settings.data, trust_model_code=settings.trust_model_code
    )
    shape = settings.input_shape
    if shape is not None and shape[0] is None:  # --input-size HxW keeps the checkpoint's channels
        shape = (config["input_shape"][0], *shape[1:])
    if shape is not None and list(shape) != config["input_shape"]:
        probe(model, tuple(shape))  # one line naming what the forward pass raised
        config = {**config, "input_shape": list(shape), **_resized_preprocess(config, shape)}
    model_input = ModelInput.of_config(config, name=Path(checkpoint).name)
    x_val, y_val = ModelData.of(model_input, settings.data).batches().collect()
    figures = _export_to(
        model, config, output, settings, {"checkpoint_sha256": config["checkpoint_sha256"]}, x_val, y_val
    )
    params = settings.params(config["input_shape"] if shape is not None else None)
    inputs = {"checkpoint": config["checkpoint_sha256"]}
    record = model_record(config)
    write_manifest(
        output, Kind.ONNX, inputs=inputs, params=params, precision=Precision.FP32, parity=figures, model=record
    )
    return {
        **_what_was_written(output, config["model"], settings, config["input_shape"]),
        "weights_sha256": record["weights_sha256"],
        "samples": int(len(y_val)),
        "checked_on": f"{len(y_val)} held-out images",
        "top1_pytorch": figures.pop("reference_top1"),
        "top1_onnx": figures.pop("top1"),
        **figures,
    }


def _export_weights(weights: str | Path, output: Path, spec: ModelSpec, settings: ExportSettings) -> dict[str, Any]:
    """A plain weights file exported with no data: proven on seeded synthetic inputs, and said so. With
    no dataset there is no held-out split to record, so later stages treat it as any ONNX."""
    model, record = model_from_weights(weights, spec, settings.input_shape)
    images = np.random.default_rng(SYNTHETIC_SEED).standard_normal((SYNTHETIC_COUNT, *record["input_shape"]))
    extra = {"num_classes": str(record["num_classes"]), "checked_on": SYNTHETIC_TEXT}
    figures = _export_to(model, record, output, settings, extra, images.astype(np.float32), None)
    say(f"The export is checked against PyTorch on {SYNTHETIC_TEXT}; {SYNTHETIC_HINT}")
    sha256 = record["weights"]["sha256"]
    write_manifest(
        output,
        Kind.ONNX,
        inputs={"weights": sha256},
        params={**settings.params(record["input_shape"]), "checked_on": "synthetic"},
        precision=Precision.FP32,
        parity={**figures, "checked_on": SYNTHETIC_TEXT, "hint": SYNTHETIC_HINT},
        model={**model_record(record), "num_classes": record["num_classes"]},
    )
    return {
        **_what_was_written(output, record["model"], settings, record["input_shape"]),
        "num_classes": record["num_classes"],
        "weights_sha256": sha256,
        "samples": SYNTHETIC_COUNT,
        "checked_on": SYNTHETIC_TEXT,
        "hint": SYNTHETIC_HINT,
        **figures,
    }


def _what_was_written(output: Path, model: str, settings: ExportSettings, input_shape: list[int]) -> dict[str, Any]:
    return {
        "onnx": str(output),
        "model": model,
        "opset": settings.opset,
        "batch": "dynamic" if settings.dynamic_batch else settings.batch,
        "input_shape": input_shape,
        "dynamic_size": settings.dynamic_size,
    }


def _parity(model: torch.nn.Module, onnx_path: Path, images: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
    with TorchRunner(model) as runner:
        reference = predict(runner, images)
    with OnnxRuntimeRunner(onnx_path) as runner:
        logits = predict(runner, images)
    fidelity = Fidelity(["logits"])
    fidelity.update([reference], [logits], labels)
    result = fidelity.result()
    keys = ("samples", "max_abs_diff", "mean_abs_diff", "cosine", "cosine_min", "top1_agreement")
    figures = {key: result[key] for key in keys + (("top1", "reference_top1", "delta") if labels is not None else ())}
    if figures["max_abs_diff"] > MAX_ABS_DIFF or figures["top1_agreement"] < 100.0:
        raise EdgepipeError(
            f"the ONNX model differs from PyTorch: max abs logit diff {figures['max_abs_diff']:.2e} (limit {MAX_ABS_DIFF:g}), "
            f"top-1 agreement {figures['top1_agreement']:.2f}%",
            fix="try another --opset; the model may use an op the exporter does not translate exactly",
        )
    return figures


def _resized_preprocess(config: dict[str, Any], shape: tuple[int, int, int]) -> dict[str, Any]:
    """The recorded preprocessing at a new size: a plain resize becomes that size; a resize-and-crop (timm's)
    crops to it, the resize keeping its ratio."""
    recorded = config["preprocess"]
    old_h, new_h, new_w = config["input_shape"][1], shape[1], shape[2]
    if not recorded.get("crop"):
        return {"preprocess": {**recorded, "resize": [new_h, new_w]}}
    ratio = (recorded["resize"] if isinstance(recorded["resize"], int) else recorded["resize"][0]) / old_h
    resize = int(new_h * ratio) if new_h == new_w else [int(new_h * ratio), int(new_w * ratio)]
    return {"preprocess": {**recorded, "resize": resize, "crop": [new_h, new_w]}}


def _export_to(model: torch.nn.Module, config: dict[str, Any], output: Path, settings: ExportSettings, extra, *images):
    """Export ``model`` to ``output`` with the metadata every later stage reads (the model, its spec, weights,
    input shape, ``extra`` and its ``Record``); its parity figures on ``images`` (inputs and labels)."""
    dynamic_batch = settings.dynamic_batch
    example = torch.zeros(1 if dynamic_batch else settings.batch, *config["input_shape"])
    axes = {**({0: "batch"} if dynamic_batch else {}), **({2: "height", 3: "width"} if settings.dynamic_size else {})}
    dynamic_axes = {"input": axes, "logits": {0: "batch"} if dynamic_batch else {}} if axes else None
    with atomic_output(output) as path:
        try:
            # The TorchScript exporter: fast (well under a second for the zoo) and it keeps the
            # plain op set (Conv, ReduceMean, Sigmoid, Softmax, MatMul) TensorRT fuses best.
            torch.onnx.export(
                model,
                (example,),
                str(path),
                opset_version=settings.opset,
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
        metadata = {
            "model": config["model"],
            "input_shape": json.dumps(config["input_shape"]),
            "model_spec": json.dumps(config.get("model_spec"), sort_keys=True),
            "weights_sha256": model_record(config)["weights_sha256"] or "",
            "version": __version__,
            **extra,
        }
        set_metadata(proto, {f"edgepipe.{key}": value for key, value in metadata.items()})
        # preprocessing, classes, data and split: what every later stage reads (a weights file: timm's preprocessing)
        preprocess = Preprocess.from_dict(config["preprocess"]) if config.get("preprocess") else None
        (Record.of_config(config) if "split" in config else Record(preprocess)).store_in(proto)
        proto.producer_name = "edgepipe"
        proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(path))
        return _parity(model, path, *images)
