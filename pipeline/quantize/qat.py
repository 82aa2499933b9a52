"""INT8 by quantization-aware training (``--int8 --qat EPOCHS``), for ONNX models edgepipe has in PyTorch.

Post-training quantization only picks ranges; where that loses too much, the weights can learn to
live with INT8. The ONNX must have been exported by edgepipe from a PyTorch model (a checkpoint
from ``edgepipe train``, or a weights file with a zoo, timm or user ``--model``): it records that
file's sha256, and ``--checkpoint`` must be that file. Then (``qat_model.py``):

1. ModelOpt's PyTorch quantization (``INT8_DEFAULT_CFG``) calibrates a fake-quant copy on the
   calibration images (the same images, drawn the same way, as ``--int8`` without ``--qat``);
2. that copy is exported and measured against the FP32 ONNX: the "before" figures;
3. it is fine-tuned for EPOCHS passes over the calibration images, distilled from the FP32 model
   (plus the labels, where there are any), exported again with Q/DQ and measured: "after".

The result obeys the TensorRT Q/DQ rules, is compared with FP32 on the held-out images like any
INT8 model, and must meet the budget (--max-drop / --min-agreement) where one is given, or nothing
is written.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import onnx

from pipeline.artifacts import Kind, atomic_output, write_manifest
from pipeline.checkpoint import is_checkpoint, load_checkpoint, model_from_weights
from pipeline.digest import sha256_file
from pipeline.errors import EdgepipeError
from pipeline.modelspec import ModelSpec, load_recorded
from pipeline.onnxfile import read_metadata
from pipeline.precision import Precision
from pipeline.progress import info as say
from pipeline.quantize.budget import Budget, attempt, figures_text
from pipeline.quantize.calib import calibration_images
from pipeline.quantize.compare import (
    Comparison,
    Images,
    Reading,
    check_images,
    folder_preprocess,
    model_data_for,
    stored_record,
)
from pipeline.quantize.graph import count_macs, int8_share
from pipeline.quantize.qdq_rules import check_tensorrt_qdq_rules
from pipeline.quantize.source import Fp32Source, carry_metadata, check_paths, open_fp32

RECIPE = {"method": "qat", "calibration": "max", "config": "INT8_DEFAULT_CFG", "high_precision": "fp32"}
_SHOWN = ("agreement", "top1", "delta", "cosine", "max_abs_diff")  # the figures "before" and "after" keep


def to_int8_qat(
    onnx_path: str | Path,
    output: str | Path,
    epochs: int,
    checkpoint: str | Path | None = None,
    calib: Any = None,
    force: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Write a Q/DQ INT8 version of ``onnx_path`` fine-tuned for ``epochs`` and return its figures against FP32.

    ``checkpoint``: the checkpoint or weights file the ONNX was exported from. ``options``:
    ``model_name`` (a ``ModelSpec``) and ``trust_model_code`` (as export takes them), ``max_drop``
    and ``min_agreement`` (the budget), and ``Reading``'s fields (data, size, size_flag,
    preprocess, labels, workers).
    """
    started = time.perf_counter()
    if epochs < 1:
        raise EdgepipeError(f"--qat must be at least 1 epoch, got {epochs}", fix="pass e.g. --qat 2")
    model_name, trust = options.pop("model_name", None), options.pop("trust_model_code", False)
    budget = Budget(options.pop("max_drop", None), options.pop("min_agreement", None))
    reading = Reading(**options)
    output = check_paths(onnx_path, output, force)
    source = open_fp32(onnx_path, "--int8 --qat", reading.size, reading.size_flag)
    teacher, behind = pytorch_model_behind(source, checkpoint, model_name, trust)
    model_input, model_data = model_data_for(source, reading)
    calib_images, calib_info = calibration_images(calib, model_data, source, model_input, reading.__dict__)
    comparison = _comparison(source, model_data, calib_images, budget, reading.workers)
    quantized, qat = _trained(source, teacher, calib_images, epochs, comparison)
    figures = qat.pop("figures")
    _check_budget(budget, figures, epochs)
    recipe = {**RECIPE, "epochs": epochs}
    carry_metadata(source.model, quantized, Precision.INT8, {"edgepipe.int8": json.dumps(recipe, sort_keys=True)})
    stored_record(model_input, model_data, quantized)  # later stages read the images the same way, with no flags
    check_tensorrt_qdq_rules(quantized)
    with atomic_output(output) as tmp:
        onnx.save(quantized, str(tmp))
    facts = {
        "kept_nodes": [],
        "attempts": qat.pop("attempts"),
        "macs": qat.pop("macs"),
        "qat": qat,
        "pytorch": behind,
        "calibration": calib_info,
        "check": comparison.record(),
    }
    seconds = round(time.perf_counter() - started, 2)
    params = {
        "precision": "int8",
        **recipe,
        **budget.record(),
        "input_shape": list(source.input_shape()),
        "data": reading.data,
        "preprocess": folder_preprocess(source.model, reading.data, reading.preprocess, calib),
    }
    inputs = {"onnx": sha256_file(onnx_path), "calibration": calib_info["sha256"], "pytorch": behind["sha256"]}
    manifest = {"precision": Precision.INT8, "accuracy": figures, "seconds": seconds, **facts}
    write_manifest(output, Kind.ONNX, inputs=inputs, params=params, **manifest)
    result = {"onnx": str(output), "source": str(onnx_path), "precision": "int8", "seconds": seconds}
    return {**result, **recipe, **budget.record(), **facts, **figures}


def _check_budget(budget: Budget, figures: dict[str, Any], epochs: int) -> None:
    """A fine-tuned model below the budget is not written: one error with what it reached."""
    if budget.active and not budget.met(figures):
        raise EdgepipeError(
            f"after {epochs} epoch(s) of quantization-aware training INT8 misses the budget ({budget.text()}): "
            f"it reached {figures_text(figures)}",
            fix="train more epochs (--qat N), give more calibration images (--calib), or loosen the budget",
        )


def _comparison(source: Fp32Source, model_data, calib_images: Images, budget: Budget, workers) -> Comparison:
    """INT8 is compared with FP32 on the held-out images, else on the calibration images (and says so)."""
    if model_data is not None:
        compare_on = check_images(model_data, source, workers)
    else:
        text, hint = f"the {calib_images.text}", "pass --data for held-out images"
        compare_on = Images(calib_images.x, calib_images.y, "calibration", text, hint)
    budget.check_images(compare_on.labelled, compare_on.text)
    hint = f"; {compare_on.hint}" if compare_on.hint else ""
    say(f"INT8 (QAT) is checked against FP32 on {compare_on.text}{hint}")
    return Comparison(source.model.SerializeToString(), compare_on, source.info)


def _trained(source: Fp32Source, teacher, images: Images, epochs: int, comparison: Comparison):
    """The fine-tuned Q/DQ model, and what QAT did: before/after figures, losses, attempts, MACs in INT8."""
    # torch and ModelOpt's PyTorch side: only --qat pays for them
    from pipeline.quantize.qat_model import LEARNING_RATE, calibrate, export_qdq, fine_tune

    sample_shape = source.sample_shape
    started = time.perf_counter()
    student = calibrate(teacher, images.x)
    before_model = export_qdq(student, source.info, sample_shape)
    before = {
        **comparison.measure(before_model.SerializeToString()),
        "seconds": round(time.perf_counter() - started, 2),
    }
    say(f"Before training (ModelOpt PyTorch PTQ, max calibration): {figures_text(before)}")
    started = time.perf_counter()
    losses = fine_tune(student, teacher, images.x, images.y, epochs)
    quantized = export_qdq(student, source.info, sample_shape)
    after = {**comparison.measure(quantized.SerializeToString()), "seconds": round(time.perf_counter() - started, 2)}
    macs = _macs(quantized, source.input_shape(1))
    share = {"int8_share": macs["int8_share"]} if macs else {}
    qat = {
        "epochs": epochs,
        "images": len(images),
        "labelled": images.labelled,
        "learning_rate": LEARNING_RATE,
        "losses": losses,
        "before": {**_kept(before), **share},
        "after": {**_kept(after), **share},
        "attempts": [
            {**attempt([], before, "ptq (ModelOpt PyTorch, max calibration)"), **share, "seconds": before["seconds"]},
            {
                **attempt([], after, f"qat ({epochs} epoch(s), distilled from FP32)"),
                **share,
                "seconds": after["seconds"],
            },
        ],
        "macs": macs,
        "figures": {key: value for key, value in after.items() if key != "seconds"},
    }
    return quantized, qat


def _kept(figures: dict[str, Any]) -> dict[str, Any]:
    return {key: figures[key] for key in (*_SHOWN, "seconds") if figures.get(key) is not None}


def _macs(model: onnx.ModelProto, input_shape: tuple[int, ...]) -> dict[str, Any] | None:
    try:
        return int8_share(model, count_macs(model, input_shape))
    except EdgepipeError:  # shape inference cannot follow the model: no share to report
        return None


def pytorch_model_behind(
    source: Fp32Source, checkpoint: str | Path | None, model_name: ModelSpec | None, trust: bool
) -> tuple[Any, dict[str, Any]]:
    """The FP32 PyTorch model ``source`` was exported from, loaded from ``checkpoint``; one error where there is none.

    The ONNX records the sha256 of the checkpoint (or weights file) it was exported from, and
    ``checkpoint`` must be that file: the fine-tuned model then starts from exactly the FP32 model.
    """
    meta, name = read_metadata(source.model), source.path.name
    recorded = meta.get("edgepipe.checkpoint_sha256") or meta.get("edgepipe.weights_sha256")
    if not recorded:
        raise EdgepipeError(
            f"--qat fine-tunes the PyTorch model behind the ONNX, and {name} records none (it was not exported by edgepipe)",
            fix="export your PyTorch model with 'edgepipe export' (a checkpoint, or --weights with --model) and quantize "
            "that ONNX; or drop --qat for post-training quantization",
        )
    if checkpoint is None or not Path(checkpoint).is_file():
        given = "none is given" if checkpoint is None else f"{checkpoint} does not exist"
        raise EdgepipeError(
            f"--qat fine-tunes the PyTorch model {name} was exported from, and {given}",
            fix=f"pass --checkpoint with the checkpoint or weights file it was exported from (sha256 {recorded[:12]}...)",
        )
    sha256 = sha256_file(checkpoint)
    if sha256 != recorded:
        raise EdgepipeError(
            f"{Path(checkpoint).name} is not the model {name} was exported from (sha256 {sha256[:12]}..., "
            f"the ONNX records {recorded[:12]}...)",
            fix="pass the checkpoint or weights file the ONNX was exported from, or export the ONNX again from this one",
        )
    if is_checkpoint(checkpoint) or meta.get("edgepipe.checkpoint_sha256"):
        model, config = load_checkpoint(checkpoint, model_name=model_name, trust_model_code=trust)
        spec = config["model"]
    else:  # a weights file exported with its --model: the ONNX records the spec and the input shape
        recorded_spec = load_recorded(json.loads(meta["edgepipe.model_spec"]), model_name, trust)
        model = model_from_weights(checkpoint, recorded_spec, tuple(json.loads(meta["edgepipe.input_shape"])))[0]
        spec = recorded_spec.text
    return model, {"file": str(checkpoint), "sha256": sha256, "model": spec}
