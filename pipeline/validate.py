"""Validate artifacts against the reference model on the held-out split.

One row per artifact (ONNX at any precision, TensorRT engine): top-1, its change against the
reference in points, top-1 agreement, max/mean abs logit difference and cosine similarity. Like
Ultralytics' benchmark table, an artifact that cannot be run is a row with status "error" and its
reason, not the end of the run; an engine on a machine without a GPU is "skipped".

The reference is the PyTorch checkpoint, or an FP32 ONNX model on ONNX Runtime (a run that starts
from an ONNX model, or a model exported elsewhere). Every runner is closed when its row is done.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from pipeline import data as datamod
from pipeline.artifacts import Artifact, Kind
from pipeline.checkpoint import config_of
from pipeline.errors import EdgepipeError
from pipeline.metrics import evaluate, top1
from pipeline.onnxfile import load_onnx, read_metadata
from pipeline.precision import Precision
from pipeline.runtime import NoGpuError, open_runner, predict

SKIPPED_NO_GPU = "skipped: no NVIDIA GPU"


def validate(reference: str | Path | None, artifacts: Iterable[str | Path], data: str | None = None) -> dict[str, Any]:
    """Run the reference and every artifact on the held-out split; one row per artifact."""
    paths = [Path(a) for a in artifacts]
    if not paths:
        raise EdgepipeError("no artifact to validate", fix="pass one or more .onnx or engine files after --reference MODEL")
    ref = _reference(reference, paths)
    config = config_of(ref.path)
    dataset = datamod.load_for_config(config, data)
    images, labels = datamod.split_of(config, dataset, "val")
    with open_runner(ref) as runner:
        reference_logits = predict(runner, images)
        reference_runner = runner.name
    reference_top1 = top1(reference_logits, labels)
    rows = [_row(path, images, labels, reference_logits, config) for path in paths]
    return {
        "reference_model": str(ref.path),
        "checkpoint": str(ref.path) if ref.kind is Kind.CHECKPOINT else None,
        "model": config["model"],
        "data": dataset.source,
        "reference": {"runner": reference_runner, "top1": reference_top1, "samples": int(len(labels)), "file": str(ref.path)},
        "rows": rows,
        "ok": not any(row["status"] == "error" for row in rows),
    }


def _reference(reference: str | Path | None, artifacts: list[Path]) -> Artifact:
    """The reference artifact: the one given, else the first FP32 ONNX model among the artifacts."""
    if reference is not None:
        ref = Artifact.open(reference)
        if ref.kind not in (Kind.CHECKPOINT, Kind.ONNX) or ref.precision is not Precision.FP32:
            raise EdgepipeError(f"the reference {reference} is a {ref.precision or ''} {ref.kind}, not an FP32 model", fix="pass the PyTorch checkpoint or the FP32 .onnx as --reference")
        return ref
    for path in artifacts:
        if path.suffix == ".onnx" and path.is_file():
            candidate = Artifact.open(path)
            if candidate.precision is Precision.FP32:
                return candidate
    raise EdgepipeError("no reference to validate against", fix="pass --reference CKPT|MODEL.onnx (or an FP32 .onnx model among the artifacts)")


def _row(path: Path, images, labels, reference, config: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"artifact": str(path), "precision": None, "runner": None}
    try:
        artifact = Artifact.open(path)
        row["precision"] = str(artifact.precision) if artifact.precision else None
        with open_runner(artifact) as runner:
            row["runner"] = runner.name
            figures = evaluate(runner, images, reference, labels)
    except NoGpuError as exc:
        return {**row, "status": SKIPPED_NO_GPU, "error": str(exc)}
    except EdgepipeError as exc:
        return {**row, "status": "error", "error": str(exc)}
    except Exception as exc:  # a runtime failing on this artifact is recorded, not fatal
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        return {**row, "status": "error", "error": f"{type(exc).__name__}: {reason}"}
    return {
        **row,
        "status": "ok",
        "top1": figures["top1"],
        "delta": figures["delta"],
        "agreement": figures["top1_agreement"],
        **{k: figures[k] for k in ("max_abs_diff", "mean_abs_diff", "median_abs_diff", "cosine", "cosine_min")},
        "made_from_checkpoint": _made_from(path, config),
    }


def _made_from(path: Path, config: dict[str, Any]) -> bool | None:
    """Whether an ONNX artifact's metadata names this checkpoint (None when it cannot tell)."""
    if path.suffix != ".onnx":
        return None
    try:
        recorded = read_metadata(load_onnx(path)).get("edgepipe.checkpoint_sha256")
    except EdgepipeError:
        return None
    return None if recorded is None else recorded == config.get("checkpoint_sha256")
