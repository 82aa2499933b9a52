"""The ONNX an engine's network is parsed from: the source, or its FP16/INT8 version beside the engine.

The FP16/INT8 ONNX is made by the precision stage (``pipeline.quantize``) and reused while its
manifest says it was made from the same source, calibration set, shape, data and preprocessing.
The calibration set an engine records is the one the INT8 ONNX was calibrated on, by the sha256
the precision stage records: the set given with ``--calib``, or the set drawn when none was.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import quantize
from pipeline.artifacts import read_manifest
from pipeline.build.plan import Plan, default_engine_path
from pipeline.digest import sha256_file
from pipeline.errors import EdgepipeError
from pipeline.progress import info as say


@dataclass(frozen=True)
class Conversion:
    """How the FP16/INT8 ONNX is made: at a fixed height/width of a dynamic-H/W model, checked on ``data``."""

    size: tuple[int, int] | None
    input_shape: list[int] | None
    data: str | None
    reading: dict[str, Any]
    preprocess: dict[str, Any] | None


def conversion(plan: Plan) -> Conversion | None:
    """The conversion of ``plan`` (at the --optShapes height/width of a dynamic-H/W model), or None when there is none."""
    if not plan.converting:
        return None
    info, size = plan.info, None
    if info.dynamic_hw and info.input_name in plan.profiles:
        opt = plan.profiles[info.input_name][1]
        size = (opt[info.hw_axes[0]], opt[info.hw_axes[1]])
    shape = [1, *info.sample_shape(*(size or (None, None)))] if size or not info.dynamic_hw else None
    settings = plan.settings
    preprocess = quantize.folder_preprocess(
        plan.model, settings.data, settings.reading.get("preprocess"), settings.calib
    )
    return Conversion(size, shape, settings.data, settings.reading, preprocess)


def intermediate_path(plan: Plan) -> Path:
    """model.fp16.onnx beside the engine."""
    return plan.engine.with_name(default_engine_path(plan.source, plan.target).stem + ".onnx")


def known_calibration(plan: Plan, source_sha: str, made: Conversion | None) -> str | None:
    """The sha256 of the calibration set the engine is built with, where it is known before converting.

    ``--calib``: its sha256, as the precision stage records it. Without it, the set drawn for the
    INT8 ONNX beside the engine, while that ONNX is current; else None (known once it is made).
    """
    if plan.settings.calib is not None:
        return quantize.calibration_sha256(plan.settings.calib)
    output = intermediate_path(plan)
    if made is not None and output.exists() and _is_current(output, plan, source_sha, made):
        return read_manifest(output).get("inputs", {}).get("calibration")
    return None


def network_onnx(plan: Plan, source_sha: str, made: Conversion | None, force: bool) -> tuple[Path, dict | None]:
    """The ONNX the network is parsed from, and its check against FP32 (None when it is the source)."""
    if made is None:
        return plan.source, None
    output = intermediate_path(plan)
    if output.resolve() == plan.source.resolve():
        raise EdgepipeError(
            f"the {plan.target.upper()} model would overwrite its source {plan.source}",
            fix="rename the source ONNX, or pass --saveEngine in another folder",
        )
    if output.exists() and _is_current(output, plan, source_sha, made):
        check = quantize.check_summary(read_manifest(output))
        calibrated = " and calibration set" if plan.target == "int8" else ""
        checked = f"; checked against FP32 on {check['on']}" if check else ""
        say(f"Precision: reusing {output} (made from the same ONNX{calibrated}){checked}")
        return output, check
    say(f"Precision: converting {plan.source} to {plan.target.upper()} -> {output}")
    quantize.convert(
        plan.target,
        plan.source,
        output,
        calib=plan.settings.calib,
        force=force,
        data=made.data,
        size=made.size,
        size_flag="--optShapes",
        **made.reading,
    )
    return output, quantize.check_summary(read_manifest(output))


def _is_current(output: Path, plan: Plan, source_sha: str, made: Conversion) -> bool:
    """True when the FP16/INT8 ONNX beside the engine was made from this source (and calibration set), shape and data."""
    manifest = read_manifest(output)
    if not manifest or manifest.get("params", {}).get("precision") != plan.target:
        return False
    if manifest.get("sha256") != sha256_file(output):
        return False
    params, made_from = manifest["params"], manifest.get("inputs", {})
    if (
        made_from.get("onnx") != source_sha
        or params.get("data") != made.data
        or params.get("input_shape") != made.input_shape
        or params.get("preprocess") != made.preprocess
    ):
        return False
    calib = plan.settings.calib
    # A calibration set drawn by default is fixed by the source model and data (seed 0).
    return plan.target != "int8" or calib is None or made_from.get("calibration") == quantize.calibration_sha256(calib)
