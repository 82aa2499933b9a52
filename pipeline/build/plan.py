"""`Plan`: a build's settings resolved against the model and the backend, every refusal before any output."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.artifacts import check_output
from pipeline.errors import EdgepipeError
from pipeline.images import Record
from pipeline.onnxfile import load_onnx
from pipeline.onnxinfo import ModelInfo, check_profile_shapes, describe, onnx_inputs
from pipeline.precision import Precision, of_onnx
from pipeline.tensorrt.backend import Backend, get_backend
from pipeline.tensorrt.options import SHAPE_KINDS, BuildSettings, resolve_compute_capabilities, resolve_profiles


@dataclass(frozen=True)
class Plan:
    """One build, decided: the source, the engine file, the backend and what the engine will be. ``settings``
    are the user's, resolved: ``precision`` is the engine's, ``compute_capability`` what the builder is given
    ("current" or "X.Y"; none for standard TensorRT)."""

    settings: BuildSettings
    source: Path
    model: Any  # the ONNX ModelProto
    backend: Backend
    graph_precision: str  # the precision the ONNX has
    engine: Path
    profiles: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]
    profile_note: str | None
    info: ModelInfo | None  # the single image input, where edgepipe can read one
    targets: list[str]  # target compute capabilities, as the manifest records them

    @property
    def target(self) -> Precision:
        """The engine's precision."""
        return self.settings.precision

    @property
    def mode(self) -> str:
        return "legacy" if self.settings.legacy_precision else "explicit"

    @property
    def converting(self) -> bool:
        """True when an FP16/INT8 ONNX is made first and the engine is built from it."""
        return self.mode == "explicit" and self.target != self.graph_precision

    @property
    def calibrated(self) -> bool:
        """True when INT8 is calibrated for this build (explicit Q/DQ or the legacy calibrator)."""
        return self.target == Precision.INT8 and self.graph_precision != Precision.INT8


def make_plan(onnx_path: str | Path, settings: BuildSettings, save_engine: str | Path | None) -> Plan:
    source = Path(onnx_path)
    model = load_onnx(source)
    be = get_backend(settings.backend)
    graph_precision = of_onnx(model)
    target = settings.precision or graph_precision
    given, targets = resolve_compute_capabilities(be, list(settings.compute_capability) or None)
    settings = replace(settings, precision=target, compute_capability=tuple(given))
    _check_precision(source, settings, be, graph_precision)
    engine = Path(save_engine) if save_engine else default_engine_path(source, target)
    check_output(engine, force=True)  # a folder that can be written (existing files are handled later)
    converting = not settings.legacy_precision and target != graph_precision
    try:
        info = describe(model)  # the single image input, as edgepipe reads it
    except EdgepipeError:
        if converting:  # a model edgepipe cannot read so is an error only where it converts it
            raise
        info = None
    if converting and target == Precision.INT8 and not settings.has_images:  # INT8 needs real images
        if info is None or Record.of_onnx(model, source).source is None:
            raise EdgepipeError(
                f"--int8 needs calibration images, and {source} records no training data to draw them from "
                "(edgepipe never calibrates on random data)",
                fix="pass --calib calib.npz (from 'edgepipe calibrate') or --data DIR with 64 or more of your images",
            )
    profiles, note = resolve_profiles(onnx_inputs(model), settings.shapes)
    if info is not None:  # dimensions sharing one symbolic name, which TensorRT requires equal
        check_profile_shapes(info, {f"--{kind}Shapes": settings.shapes.get(kind, {}) for kind in SHAPE_KINDS})
    be.check_settings(settings)  # an option the backend lacks is one clear error
    return Plan(settings, source, model, be, graph_precision, engine, profiles, note, info, targets)


def default_engine_path(onnx_path: Path, precision: str) -> Path:
    """model.onnx -> model.fp16.engine beside it (model.fp16.onnx -> model.fp16.engine too)."""
    base, _, suffix = onnx_path.stem.rpartition(".")
    stem = base if base and suffix in {p.value for p in Precision} else onnx_path.stem
    return onnx_path.with_name(f"{stem}.{precision}.engine")


def _check_precision(source: Path, settings: BuildSettings, be: Backend, graph_precision: str) -> None:
    target = settings.precision
    if settings.legacy_precision:
        be.check_settings(BuildSettings(legacy_precision=True))  # names what the backend lacks, first
    if settings.legacy_precision and target == "int8" and graph_precision != "int8" and settings.calib is None:
        raise EdgepipeError(
            "legacy INT8 calibration needs a calibration set",
            fix="pass --calib CALIB.npz, or drop --legacy-precision (explicit INT8 draws one from the training data)",
        )
    if not settings.legacy_precision and target != graph_precision and graph_precision != "fp32":
        raise EdgepipeError(
            f"{source} is already {graph_precision.upper()}; it cannot be built as {target.upper()}",
            fix=f"build it without a precision flag (it builds as {graph_precision.upper()}), or start from the FP32 ONNX",
        )
