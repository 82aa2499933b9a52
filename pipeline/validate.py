"""Validate artifacts against the PyTorch reference on the held-out split.

One row per artifact (ONNX at any precision, TensorRT engine): top-1, its change against PyTorch
in points, top-1 agreement with PyTorch, max/mean abs logit difference and cosine similarity.
Like Ultralytics' benchmark table, an artifact that cannot be run is a row with status "error"
and its reason, not the end of the run; an engine on a machine without a GPU is "skipped".
Without a checkpoint (a run that starts from an ONNX model), the FP32 ONNX model on ONNX Runtime
stands in as the reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from pipeline import data as datamod
from pipeline.artifacts import read_manifest
from pipeline.errors import EdgepipeError
from pipeline.metrics import compare_logits, top1
from pipeline.onnxfile import load_onnx, onnx_config
from pipeline.runners import NoGpuError, OnnxRuntimeRunner, TorchRunner, load_runner, predict
from pipeline.train import load_checkpoint


def validate(checkpoint: str | Path | None, artifacts: Iterable[str | Path], data: str | None = None) -> dict[str, Any]:
    """Run the reference and every artifact on the held-out split; one row per artifact."""
    artifacts = [Path(a) for a in artifacts]
    if not artifacts:
        raise EdgepipeError("no artifact to validate", fix="pass one or more .onnx or engine files after --checkpoint CKPT")
    reference_runner, config = _reference(checkpoint, artifacts, data)
    dataset = datamod.load_for_config(config, data)
    images, labels = datamod.split_of(config, dataset, "val")
    reference = predict(reference_runner, images)
    reference_top1 = top1(reference, labels)
    rows = [_row(path, images, labels, reference, reference_top1, config) for path in artifacts]
    return {
        "checkpoint": str(checkpoint) if checkpoint else None,
        "model": config["model"],
        "data": dataset.source,
        "reference": {"runner": reference_runner.name, "top1": reference_top1, "samples": int(len(labels))},
        "rows": rows,
        "ok": not any(row["status"] == "error" for row in rows),
    }


def _reference(checkpoint: str | Path | None, artifacts: list[Path], data: str | None):
    """(runner, config) of the reference: PyTorch from the checkpoint, else the FP32 ONNX model."""
    if checkpoint is not None:
        model, config = load_checkpoint(checkpoint, data=data)
        return TorchRunner(model), config
    fp32 = next((p for p in artifacts if p.suffix == ".onnx" and p.is_file() and artifact_precision(p) == "fp32"), None)
    if fp32 is None:
        raise EdgepipeError("no reference to validate against", fix="pass --checkpoint CKPT (or an FP32 .onnx model among the artifacts)")
    return OnnxRuntimeRunner(fp32), onnx_config(load_onnx(fp32), fp32)


def _row(path: Path, images, labels, reference, reference_top1: float, config: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"artifact": str(path), "precision": None, "runner": None}
    try:
        row["precision"] = artifact_precision(path)
        runner = load_runner(path)
        row["runner"] = runner.name
        logits = predict(runner, images)
        if logits.shape != reference.shape:
            raise EdgepipeError(f"it returns logits of shape {logits.shape}, PyTorch {reference.shape}", fix="pass artifacts made from this checkpoint")
    except NoGpuError as exc:
        return {**row, "status": "skipped: no NVIDIA GPU", "error": str(exc)}
    except EdgepipeError as exc:
        return {**row, "status": "error", "error": str(exc)}
    except Exception as exc:  # a runtime failing on this artifact is recorded, not fatal
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        return {**row, "status": "error", "error": f"{type(exc).__name__}: {reason}"}
    figures = compare_logits(reference, logits)
    value = top1(logits, labels)
    return {
        **row,
        "status": "ok",
        "top1": value,
        "delta": value - reference_top1,
        "agreement": figures["top1_agreement"],
        "max_abs_diff": figures["max_abs_diff"],
        "mean_abs_diff": figures["mean_abs_diff"],
        "median_abs_diff": figures["median_abs_diff"],
        "cosine": figures["cosine"],
        "cosine_min": figures["cosine_min"],
        "made_from_checkpoint": _made_from(path, config),
    }


def artifact_precision(path: Path) -> str:
    """The precision in the artifact's manifest, else (for an ONNX) the one its graph has."""
    manifest = read_manifest(path) or {}
    recorded = (manifest.get("params") or {}).get("precision") or manifest.get("precision")
    if recorded:
        return str(recorded)
    if path.suffix == ".onnx" and path.is_file():
        from pipeline.onnxfile import load_onnx
        from pipeline.precision import detect_precision

        return detect_precision(load_onnx(path))
    return "unknown"


def _made_from(path: Path, config: dict[str, Any]) -> bool | None:
    """Whether an ONNX artifact's metadata names this checkpoint (None when it cannot tell)."""
    if path.suffix != ".onnx":
        return None
    try:
        from pipeline.onnxfile import load_onnx, read_metadata

        recorded = read_metadata(load_onnx(path)).get("edgepipe.checkpoint_sha256")
    except EdgepipeError:
        return None
    return None if recorded is None else recorded == config.get("checkpoint_sha256")
