"""Validate artifacts against the FP32 reference model, one road for every model.

One row per artifact (ONNX at any precision, TensorRT engine) with its ``Fidelity`` figures; one that
cannot be run is a row with status "error" (an engine without a GPU: "skipped"), not the end of the run.

The reference is a checkpoint, a weights file with ``--model``, or an FP32 ONNX; the images are its
``ModelData``, streamed once: each batch is decoded once and run through the reference and every
artifact, so memory stays flat in the number of images. ``split`` chooses which count (docs/data.md).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import images
from pipeline.artifacts import Artifact, Kind
from pipeline.checkpoint import config_of, is_checkpoint, model_from_weights, model_record
from pipeline.defaults import SKIPPED_NO_GPU, SPLITS
from pipeline.errors import EdgepipeError
from pipeline.fidelity import DEFAULT_ATOL, DEFAULT_RTOL, Fidelity
from pipeline.images import FLAG_KEYS, ModelData, ModelInput, PreprocessFlags
from pipeline.modelspec import ModelCode
from pipeline.onnxfile import load_onnx, read_metadata
from pipeline.precision import Precision
from pipeline.preprocess import Preprocess
from pipeline.progress import info
from pipeline.runtime import NoGpuError, Runner, open_runner, predict

FIGURE_KEYS = ("top1", "delta", "max_abs_diff", "mean_abs_diff", "median_abs_diff", "cosine", "cosine_min")


@dataclass(frozen=True)
class Settings:
    """How validate reads and judges: the user's images and flags, the split rule, batch and tolerances."""

    data: str | None = None
    labels: str | Path | None = None
    preprocess: PreprocessFlags | None = None
    workers: int | None = None
    split: str | dict[str, Any] = "auto"
    batch_size: int = images.DEFAULT_BATCH_SIZE
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL


def validate(
    reference: str | Path | None,
    artifacts: Iterable[str | Path],
    data: str | None = None,
    *,
    code: ModelCode = ModelCode(),
    **settings: Any,
) -> dict[str, Any]:
    """Run the reference and every artifact on the same images; one row per artifact. ``settings``: the
    fields of ``Settings``; ``code``: the user code a checkpoint or weights reference is rebuilt from."""
    chosen = Settings(data=data, **settings)
    if chosen.split not in SPLITS and not isinstance(chosen.split, dict):
        raise EdgepipeError(f"unknown split {chosen.split!r}", fix=f"use one of {', '.join(SPLITS)}")
    paths = [Path(a) for a in artifacts]
    if not paths:
        raise EdgepipeError(
            "no artifact to validate", fix="pass one or more .onnx or engine files after --reference MODEL"
        )
    ref = _reference(reference, paths, code, chosen.preprocess)
    info(ref.model_input.describe())
    model_data = ModelData.of(ref.model_input, chosen.data, chosen.labels)
    return _compare(ref, model_data, paths, chosen)


@dataclass
class _Reference:
    """The reference model: its file, what it takes and records, and how its runner opens."""

    path: Path
    model_input: ModelInput
    open: Callable[[], Any]
    name: str
    config: dict[str, Any] | None = None  # a checkpoint's config


def _reference(reference, paths: list[Path], code: ModelCode, flags: PreprocessFlags | None) -> _Reference:
    """The reference: a weights file with --model, a checkpoint, or an FP32 ONNX (given, else the first among the artifacts)."""
    given = flags if flags is not None and flags.given else None
    onnx_paths = [path for path in paths if path.suffix == ".onnx" and path.is_file()]
    if reference is not None and _is_plain_weights(Path(reference), code):
        return _weights_reference(Path(reference), onnx_paths, code, given)
    fp32_models = (model for model in map(Artifact.open, onnx_paths) if model.precision is Precision.FP32)
    ref = Artifact.open(reference) if reference is not None else next(fp32_models, None)
    if ref is None:
        raise EdgepipeError(
            "no reference to validate against",
            fix="pass --reference CKPT|MODEL.onnx (or an FP32 .onnx model among the artifacts)",
        )
    if ref.kind not in (Kind.CHECKPOINT, Kind.ONNX) or ref.precision is not Precision.FP32:
        raise EdgepipeError(
            f"the reference {reference} is a {ref.precision or ''} {ref.kind}, not an FP32 model",
            fix="pass the PyTorch checkpoint or the FP32 .onnx as --reference",
        )
    if ref.kind is Kind.CHECKPOINT:
        config = config_of(ref.path)
        model_input = ModelInput.of_config(config, given, ref.path.name)
        return _Reference(ref.path, model_input, lambda: open_runner(ref, code=code), config["model"], config)
    model_input = ModelInput.of_onnx(ref.path, given or _stored_in_candidates(ref.path, onnx_paths))
    name = read_metadata(load_onnx(ref.path)).get("edgepipe.model") or ref.path.name
    return _Reference(ref.path, model_input, lambda: open_runner(ref), name)


def _weights_reference(weights: Path, onnx_models: list[Path], code: ModelCode, flags) -> _Reference:
    """The user's PyTorch model (``--model`` with ``--reference WEIGHTS``), read the way the first ONNX artifact records."""
    if not onnx_models:
        raise EdgepipeError(
            f"--reference {weights.name} is a weights file: edgepipe reads the model's input and preprocessing from an ONNX model "
            "among the artifacts, and there is none",
            fix="add the exported .onnx to the artifacts, or pass --reference MODEL.onnx",
        )
    model_input = ModelInput.of_onnx(onnx_models[0], flags)
    if model_input.info.layout != "nchw":
        raise EdgepipeError(
            f"{onnx_models[0].name} takes NHWC images, a PyTorch model NCHW",
            fix="pass --reference MODEL.onnx (the FP32 ONNX) instead of the weights",
        )
    from pipeline.runtime.pytorch import TorchRunner  # imports torch: only a PyTorch reference pays for it

    model, _ = model_from_weights(weights, code.given, tuple(model_input.sample_shape))
    return _Reference(weights, model_input, lambda: TorchRunner(model), weights.name)


def _compare(ref: _Reference, model_data: ModelData, paths: list[Path], chosen: Settings) -> dict[str, Any]:
    """Stream the images once through the reference and every artifact; one row per artifact."""
    indices, judged = model_data.judged(chosen.split, paths)
    use_labels, output_names = model_data.labelled, ref.model_input.info.output_names
    correct, started = 0, time.perf_counter()
    with contextlib.ExitStack() as stack:
        reference_runner = stack.enter_context(ref.open())
        candidates = [_open_candidate(path, output_names, stack) for path in paths]
        workers = images.default_workers(beside_model=True) if chosen.workers is None else chosen.workers
        stream = model_data.batches(indices, batch_size=chosen.batch_size, workers=workers, progress="validate")
        for x, y in stream:
            y = y if use_labels else None
            reference_outputs = predict(reference_runner, x, len(x), outputs="all")
            if y is not None:
                correct += int((reference_outputs[0].argmax(axis=-1) == y).sum())
            for candidate in (candidate for candidate in candidates if not candidate.failed):
                try:
                    candidate.fidelity.update(reference_outputs, predict(candidate.runner, x, len(x), "all"), y)
                except Exception as exc:  # recorded; the others go on (its runner is closed with theirs)
                    candidate.failed = _failure(exc)
        reference_name = reference_runner.name
    seconds = time.perf_counter() - started
    rows = [candidate.row(chosen.atol, chosen.rtol, ref.config) for candidate in candidates]
    source = model_data.source
    unscored = source.labelled and not use_labels
    notes = [f"labels are not compared: output '{output_names[0]}' is not N x classes"] if unscored else []
    return {
        "reference_model": str(ref.path),
        "checkpoint": str(ref.path) if ref.config else None,
        "model": ref.name,
        "model_record": model_record(ref.config) if ref.config else None,
        "data": source.spec,
        "images": {**judged, "kind": source.kind, "labelled": use_labels},
        "preprocess": ref.model_input.summary(),
        "reference": {
            "runner": reference_name,
            "top1": correct / len(indices) * 100.0 if use_labels else None,
            "samples": int(len(indices)),
            "file": str(ref.path),
        },
        "atol": chosen.atol,
        "rtol": chosen.rtol,
        "seconds": round(seconds, 3),
        "images_per_s": round(len(indices) / seconds, 2) if seconds > 0 else None,
        "notes": notes,
        "rows": rows,
        "ok": not any(row["status"] == "error" for row in rows),
    }


@dataclass
class _Candidate:
    """One artifact's runner and running figures; ``failed`` once it cannot go on."""

    path: Path
    precision: str | None = None
    runner: Runner | None = None
    fidelity: Fidelity | None = None
    failed: dict[str, Any] = field(default_factory=dict)

    def row(self, atol: float, rtol: float, config: dict[str, Any] | None = None) -> dict[str, Any]:
        runner = self.runner.name if self.runner else None
        row = {"artifact": str(self.path), "precision": self.precision, "runner": runner}
        if self.failed:
            return {**row, **self.failed}
        figures = self.fidelity.result(atol, rtol)
        return {
            **row,
            "status": "ok",
            "agreement": figures["top1_agreement"],
            **{k: figures.get(k) for k in FIGURE_KEYS},
            "passed": figures["passed"],
            "outputs": figures["outputs"],
            "made_from_checkpoint": _made_from(self.path, config),
        }


def _made_from(path: Path, config: dict[str, Any] | None) -> bool | None:
    """Whether an ONNX artifact's metadata names the reference checkpoint (None when it cannot tell)."""
    if config is None or path.suffix != ".onnx" or not path.is_file():
        return None
    recorded = read_metadata(load_onnx(path)).get("edgepipe.checkpoint_sha256")
    return None if recorded is None else recorded == config.get("checkpoint_sha256")


def _failure(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, (NoGpuError, EdgepipeError)):
        return {"status": SKIPPED_NO_GPU if isinstance(exc, NoGpuError) else "error", "error": str(exc)}
    reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return {"status": "error", "error": f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__}


def _is_plain_weights(path: Path, code: ModelCode) -> bool:
    """A .pt/.pth/.safetensors state dict (not an edgepipe checkpoint) given with a timm or user-code --model."""
    return (
        path.suffix.lower() in (".pt", ".pth", ".safetensors")
        and code.given is not None
        and code.given.kind != "zoo"
        and path.is_file()
        and not is_checkpoint(path)
    )


def _open_candidate(path: Path, output_names: list[str], stack: contextlib.ExitStack) -> _Candidate:
    candidate = _Candidate(path)
    try:
        artifact = Artifact.open(path)
        candidate.precision = str(artifact.precision) if artifact.precision else None
        candidate.runner = stack.enter_context(open_runner(artifact))
        candidate.fidelity = Fidelity(output_names)
    except Exception as exc:  # an artifact that cannot be opened is a row, not the end of validation
        candidate.failed = _failure(exc)
    return candidate


def _stored_in_candidates(reference: Path, onnx_paths: list[Path]) -> PreprocessFlags | None:
    """With no flags and none stored in the reference, the preprocessing an FP16/INT8 model made from it stores (quantize --data FOLDER)."""
    if Preprocess.from_onnx(load_onnx(reference)) is not None:
        return None
    for path in onnx_paths:
        stored = Preprocess.from_onnx(load_onnx(path))
        if stored is not None:
            return PreprocessFlags(
                {key: value for key, value in stored.to_dict().items() if key in FLAG_KEYS and value is not None}
            )
    return None
