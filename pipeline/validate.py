"""Validate artifacts against the FP32 reference model, on its held-out split or on the user's images.

One row per artifact (ONNX at any precision, TensorRT engine): top-1 and its change against the
reference in points (when the images are labelled), argmax agreement, max/mean abs difference and
cosine similarity. Like Ultralytics' benchmark table, an artifact that cannot be run is a row with
status "error" and its reason, not the end of the run; an engine on a machine without a GPU is
"skipped". Every runner is closed, whatever happens.

* edgepipe's own models (a checkpoint, or an ONNX with edgepipe's metadata): the reference is the
  PyTorch checkpoint or the FP32 ONNX, on the held-out split the checkpoint records, as before;
* any other ONNX: the reference is the FP32 ONNX itself on ONNX Runtime, fed the user's images
  (``--data``) through the model's preprocessing (stored in its metadata, or given as flags). The
  images are streamed once: each batch is decoded once and run through the reference and every
  artifact, and compared output by output (``Fidelity``), so memory stays flat in the number of
  images. When an artifact was calibrated on part of the same data, only the held-out part counts.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import data as datamod
from pipeline import images
from pipeline.artifacts import Artifact, Kind, read_manifest
from pipeline.checkpoint import config_of, is_checkpoint, model_from_weights, model_record
from pipeline.defaults import SPLITS
from pipeline.errors import EdgepipeError
from pipeline.fidelity import DEFAULT_ATOL, DEFAULT_RTOL, Fidelity
from pipeline.images import FLAG_KEYS, ModelInput, PreprocessFlags, refuse_for_recorded
from pipeline.metrics import evaluate, top1
from pipeline.modelspec import ModelCode
from pipeline.onnxfile import CONFIG_KEY, load_onnx, read_metadata
from pipeline.precision import Precision
from pipeline.preprocess import Preprocess
from pipeline.progress import info
from pipeline.runtime import NoGpuError, Runner, batch_step, open_runner, predict, predict_batch

SKIPPED_NO_GPU = "skipped: no NVIDIA GPU"
FIGURE_KEYS = ("max_abs_diff", "mean_abs_diff", "median_abs_diff", "cosine", "cosine_min")


def validate(
    reference: str | Path | None,
    artifacts: Iterable[str | Path],
    data: str | None = None,
    *,
    labels: str | Path | None = None,
    preprocess: PreprocessFlags | None = None,
    workers: int | None = None,
    split: str | dict[str, Any] = "auto",
    batch_size: int = images.DEFAULT_BATCH_SIZE,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    code: ModelCode = ModelCode(),
) -> dict[str, Any]:
    """Run the reference and every artifact on the same images; one row per artifact.

    ``code``: the user code a checkpoint reference may be rebuilt from (--model, --trust-model-code).

    ``labels``, ``preprocess``, ``workers`` and ``split`` are for models edgepipe did not export:
    ``split`` "held-out" judges on the held-out part of a seeded split of ``data``, "all" on every
    image, "auto" on the held-out part when an artifact was calibrated on the rest, a split record
    (``ImageSource.split().record``) on exactly that split.
    """
    paths = [Path(a) for a in artifacts]
    if not paths:
        raise EdgepipeError(
            "no artifact to validate", fix="pass one or more .onnx or engine files after --reference MODEL"
        )
    if reference is not None and _is_plain_weights(Path(reference), code):
        return _validate_weights(
            Path(reference), paths, data, labels, preprocess, workers, split, batch_size, atol, rtol, code
        )
    ref = _reference(reference, paths)
    if ref.kind is Kind.CHECKPOINT or CONFIG_KEY in read_metadata(load_onnx(ref.path)):
        refuse_for_recorded(ref.path, preprocess, labels)
        return _validate_recorded(ref, paths, data, code)
    return _validate_on_images(ref, paths, data, labels, preprocess, workers, split, batch_size, atol, rtol)


def _reference(reference: str | Path | None, artifacts: list[Path]) -> Artifact:
    """The reference artifact: the one given, else the first FP32 ONNX model among the artifacts."""
    if reference is not None:
        ref = Artifact.open(reference)
        if ref.kind not in (Kind.CHECKPOINT, Kind.ONNX) or ref.precision is not Precision.FP32:
            raise EdgepipeError(
                f"the reference {reference} is a {ref.precision or ''} {ref.kind}, not an FP32 model",
                fix="pass the PyTorch checkpoint or the FP32 .onnx as --reference",
            )
        return ref
    for path in artifacts:
        if path.suffix == ".onnx" and path.is_file():
            candidate = Artifact.open(path)
            if candidate.precision is Precision.FP32:
                return candidate
    raise EdgepipeError(
        "no reference to validate against",
        fix="pass --reference CKPT|MODEL.onnx (or an FP32 .onnx model among the artifacts)",
    )


# --- edgepipe's own models: the held-out split the checkpoint records -----------------------------


def _validate_recorded(ref: Artifact, paths: list[Path], data: str | None, code: ModelCode) -> dict[str, Any]:
    config = config_of(ref.path)
    dataset = datamod.load_for_config(config, data)
    x, y = datamod.split_of(config, dataset, "val")
    with open_runner(ref, code=code) as runner:
        reference_logits = predict(runner, x)
        reference_runner = runner.name
    rows = [_recorded_row(path, x, y, reference_logits, config) for path in paths]
    return {
        "reference_model": str(ref.path),
        "checkpoint": str(ref.path) if ref.kind is Kind.CHECKPOINT else None,
        "model": config["model"],
        "model_record": model_record(config),
        "data": dataset.source,
        "reference": {
            "runner": reference_runner,
            "top1": top1(reference_logits, y),
            "samples": int(len(y)),
            "file": str(ref.path),
        },
        "rows": rows,
        "ok": not any(row["status"] == "error" for row in rows),
    }


def _recorded_row(path: Path, x, y, reference, config: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"artifact": str(path), "precision": None, "runner": None}
    try:
        artifact = Artifact.open(path)
        row["precision"] = str(artifact.precision) if artifact.precision else None
        with open_runner(artifact) as runner:
            row["runner"] = runner.name
            figures = evaluate(runner, x, reference, y)
    except Exception as exc:  # an artifact that cannot be run is a row, not the end of validation
        return {**row, **_failure(exc)}
    return {
        **row,
        "status": "ok",
        "top1": figures["top1"],
        "delta": figures["delta"],
        "agreement": figures["top1_agreement"],
        **{k: figures[k] for k in FIGURE_KEYS},
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


def _failure(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, NoGpuError):
        return {"status": SKIPPED_NO_GPU, "error": str(exc)}
    if isinstance(exc, EdgepipeError):
        return {"status": "error", "error": str(exc)}
    reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return {"status": "error", "error": f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__}


# --- any other ONNX: the user's images, streamed once through every runner -----------------------


@dataclass
class _Candidate:
    """One artifact's runner and running figures; ``failed`` once it cannot go on."""

    path: Path
    precision: str | None = None
    runner: Runner | None = None
    fidelity: Fidelity | None = None
    failed: dict[str, Any] = field(default_factory=dict)

    def row(self, atol: float, rtol: float) -> dict[str, Any]:
        row: dict[str, Any] = {
            "artifact": str(self.path),
            "precision": self.precision,
            "runner": self.runner.name if self.runner else None,
        }
        if self.failed:
            return {**row, **self.failed}
        figures = self.fidelity.result(atol, rtol)
        return {
            **row,
            "status": "ok",
            "top1": figures.get("top1"),
            "delta": figures.get("delta"),
            "agreement": figures["top1_agreement"],
            **{k: figures.get(k) for k in FIGURE_KEYS},
            "passed": figures["passed"],
            "outputs": figures["outputs"],
            "made_from_checkpoint": None,
        }


def _validate_on_images(
    ref: Artifact, paths: list[Path], data, labels, preprocess, workers, split, batch_size, atol, rtol
) -> dict[str, Any]:
    model_input = ModelInput.of_onnx(
        ref.path, preprocess if preprocess is not None and preprocess.given else _stored_in_candidates(ref.path, paths)
    )
    return _compare_on_images(
        ref.path, lambda: open_runner(ref), model_input, paths, data, labels, workers, split, batch_size, atol, rtol
    )


def _is_plain_weights(path: Path, code: ModelCode) -> bool:
    """A .pt/.pth/.safetensors state dict (not an edgepipe checkpoint) given with a timm or user-code --model."""
    return (
        path.suffix.lower() in (".pt", ".pth", ".safetensors")
        and code.given is not None
        and code.given.kind != "zoo"
        and path.is_file()
        and not is_checkpoint(path)
    )


def _validate_weights(
    weights: Path, paths: list[Path], data, labels, preprocess, workers, split, batch_size, atol, rtol, code: ModelCode
) -> dict[str, Any]:
    """The user's PyTorch model (``--model`` with ``--reference WEIGHTS``) as the reference of ONNX models and engines made from it."""
    onnx_models = [path for path in paths if path.suffix == ".onnx" and path.is_file()]
    if not onnx_models:
        raise EdgepipeError(
            f"--reference {weights.name} is a weights file: edgepipe reads the model's input and preprocessing from an ONNX model "
            "among the artifacts, and there is none",
            fix="add the exported .onnx to the artifacts, or pass --reference MODEL.onnx",
        )
    model_input = ModelInput.of_onnx(
        onnx_models[0], preprocess if preprocess is not None and preprocess.given else None
    )
    if model_input.info.layout != "nchw":
        raise EdgepipeError(
            f"{onnx_models[0].name} takes NHWC images, a PyTorch model NCHW",
            fix="pass --reference MODEL.onnx (the FP32 ONNX) instead of the weights",
        )
    from pipeline.runtime.pytorch import TorchRunner  # imports torch: only a PyTorch reference pays for it

    model, _ = model_from_weights(weights, code.given, tuple(model_input.sample_shape))
    return _compare_on_images(
        weights, lambda: TorchRunner(model), model_input, paths, data, labels, workers, split, batch_size, atol, rtol
    )


def _compare_on_images(
    reference: Path,
    open_reference,
    model_input: ModelInput,
    paths: list[Path],
    data,
    labels,
    workers,
    split,
    batch_size,
    atol,
    rtol,
) -> dict[str, Any]:
    """Stream the user's images once through the reference and every artifact; one row per artifact."""
    if split not in SPLITS and not isinstance(split, dict):
        raise EdgepipeError(f"unknown split {split!r}", fix=f"use one of {', '.join(SPLITS)}")
    if data is None:
        raise EdgepipeError(
            f"{reference.name} has no edgepipe metadata, so there is no recorded data to validate it on",
            fix="pass --data DIR|FILE.npz with your images (and --labels FILE with the model's class names, if the folders are classes)",
        )
    info(model_input.describe())
    source = images.open_source(data, labels=labels, num_classes=model_input.num_classes)
    indices, judged = _images_to_judge(source, paths, split)
    use_labels = source.labelled and model_input.num_classes is not None
    output_names = model_input.info.output_names
    correct, started = 0, time.perf_counter()
    with contextlib.ExitStack() as stack:
        reference_runner = stack.enter_context(open_reference())
        candidates = [_open_candidate(path, output_names, stack) for path in paths]
        workers = images.default_workers(beside_model=True) if workers is None else workers
        stream = source.batches(
            model_input.preprocess, indices, batch_size=batch_size, workers=workers, progress="validate"
        )
        for x, y in stream:
            y = y if use_labels else None
            reference_outputs = _outputs(reference_runner, x)
            if y is not None:
                correct += int((reference_outputs[0].argmax(axis=-1) == y).sum())
            for candidate in candidates:
                if not candidate.failed:
                    _feed(candidate, x, y, reference_outputs)
        reference_name = reference_runner.name
    seconds = time.perf_counter() - started
    rows = [candidate.row(atol, rtol) for candidate in candidates]
    notes = (
        []
        if use_labels or not source.labelled
        else [f"labels are not compared: output '{output_names[0]}' is not N x classes"]
    )
    return {
        "reference_model": str(reference),
        "checkpoint": None,
        "model": reference.name,
        "data": source.spec,
        "images": {**judged, "kind": source.kind, "labelled": use_labels},
        "preprocess": model_input.record(),
        "reference": {
            "runner": reference_name,
            "top1": 100.0 * correct / len(indices) if use_labels else None,
            "samples": int(len(indices)),
            "file": str(reference),
        },
        "atol": atol,
        "rtol": rtol,
        "seconds": round(seconds, 3),
        "images_per_s": round(len(indices) / seconds, 2) if seconds > 0 else None,
        "notes": notes,
        "rows": rows,
        "ok": not any(row["status"] == "error" for row in rows),
    }


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


def _feed(candidate: _Candidate, x: np.ndarray, y, reference_outputs: list[np.ndarray]) -> None:
    try:
        candidate.fidelity.update(reference_outputs, _outputs(candidate.runner, x), y)
    except (
        Exception
    ) as exc:  # a runtime failing on this artifact is recorded, the others go on (its runner is closed with theirs)
        candidate.failed = _failure(exc)


def _outputs(runner: Runner, x: np.ndarray) -> list[np.ndarray]:
    """Every output for ``x``, in the batches the runner takes (a fixed batch is padded, then cut back)."""
    step = batch_step(runner, len(x))
    parts = [predict_batch(runner, x[start : start + step], outputs="all") for start in range(0, len(x), step)]
    return parts[0] if len(parts) == 1 else [np.concatenate([part[i] for part in parts]) for i in range(len(parts[0]))]


def _stored_in_candidates(reference: Path, paths: list[Path]) -> PreprocessFlags | None:
    """With no flags and none stored in the reference, the preprocessing an FP16/INT8 model made from it stores (quantize --data FOLDER)."""
    if Preprocess.from_onnx(load_onnx(reference)) is not None:
        return None
    for path in paths:
        stored = Preprocess.from_onnx(load_onnx(path)) if path.suffix == ".onnx" and path.is_file() else None
        if stored is not None:
            return PreprocessFlags(
                {key: value for key, value in stored.to_dict().items() if key in FLAG_KEYS and value is not None}
            )
    return None


def _images_to_judge(source: images.ImageSource, paths: list[Path], split) -> tuple[np.ndarray, dict[str, Any]]:
    """The indices of the images to judge on, and what they are."""
    record = split if isinstance(split, dict) else _calibration_split(source, paths) if split == "auto" else None
    if record is not None:
        chosen = source.redraw(record)
    elif split == "held-out":
        chosen = source.split(seed=images.SPLIT_SEED, val_fraction=images.VAL_FRACTION)
    else:
        return np.arange(len(source)), {
            "which": "all",
            "count": len(source),
            "text": f"all {len(source):,} images of {source.spec}",
        }
    count = len(chosen.held_out)
    return chosen.held_out, {
        "which": "held-out",
        "count": count,
        "split": chosen.record,
        "text": f"the {count:,} held-out images of {source.spec} (never calibrated on)",
    }


def _calibration_split(source: images.ImageSource, paths: list[Path]) -> dict[str, Any] | None:
    """The split of ``source`` an artifact's calibration set was drawn with, when one was."""
    for path in paths:
        manifest = read_manifest(path) or {}
        checked = (manifest.get("check") or {}).get(
            "split"
        )  # converted by quantize/build-engine from a folder of these images
        if isinstance(checked, dict) and checked.get("source_sha256") == source.sha256:
            return checked
        calibrated = manifest.get("calibration")
        where = calibrated.get("source") if isinstance(calibrated, dict) else None
        if not isinstance(where, str) or not where.endswith(".npz"):
            continue
        for candidate in (Path(where), path.parent / Path(where).name):
            record = (read_manifest(candidate) or {}).get("split")
            if isinstance(record, dict) and record.get("source_sha256") == source.sha256:
                return record
    return None
