"""The engine itself: the network parsed, the builder run, the engine and its manifest written atomically."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import calibration
from pipeline.artifacts import Kind, atomic_output, check_output, write_manifest
from pipeline.build.plan import Plan
from pipeline.cuda import current_compute_capability
from pipeline.digest import sha256_file
from pipeline.errors import EdgepipeError
from pipeline.images import ModelInput
from pipeline.machine import PeakRSS
from pipeline.precision import is_quantized
from pipeline.progress import console
from pipeline.tensorrt.backend import TENSORRT, Backend
from pipeline.tensorrt.calibrator import legacy_calibrator
from pipeline.tensorrt.options import _dims, _profiles_json


def params(plan: Plan, preprocess: dict[str, Any] | None) -> dict[str, Any]:
    """The settings that decide what the engine is, as its manifest records them (the reuse rule compares them)."""
    return {
        "precision": plan.target,
        "precision_mode": plan.mode,
        "backend": plan.backend.name,
        "backend_version": plan.backend.version,
        "profiles": _profiles_json(plan.profiles),
        "compute_capabilities": list(plan.settings.compute_capability),
        **plan.settings.controls(),
        "preprocess": preprocess,
    }


def build_serialized(plan: Plan, network_onnx: Path, inputs: dict) -> tuple[bytes, Any, dict[str, float]]:
    """The serialized engine, the builder config (for its timing cache) and the build's time and peak memory."""
    be = plan.backend
    with PeakRSS() as memory:
        started = time.perf_counter()
        builder, network, _parser = be.parse_onnx(network_onnx, strongly_typed=(plan.mode == "explicit"))
        _check_network_inputs(network, plan.profiles)
        calibration = _legacy_calibration(plan, inputs)
        cache, timing = plan.settings.timing_cache, None
        if cache is not None:
            check_output(cache, force=True)  # a folder that can be written; a cache already there is read and updated
            timing = cache.read_bytes() if cache.is_file() else b""
        config = be.builder_config(builder, network, plan.settings, plan.profiles, timing, calibration)
        with console.status(f"Building with {be.display}...") as status:
            try:
                serialized = be.build(builder, network, config, on_step=lambda p, n: _show(status, be, p, n))
            except EdgepipeError:
                calibration_error = getattr(calibration and calibration[0], "exception", None)
                if calibration_error is not None:
                    raise calibration_error from None
                raise
        seconds = time.perf_counter() - started
    return serialized, config, {"build_seconds": round(seconds, 3), "peak_rss_mib": round(memory.peak / 2**20, 1)}


def write_engine(plan: Plan, serialized: bytes, config: Any, record: dict[str, Any]) -> dict[str, Any]:
    """The engine, its updated timing cache and its manifest, each written atomically; returns the manifest."""
    with atomic_output(plan.engine) as tmp:
        tmp.write_bytes(serialized)
    cache_path = plan.settings.timing_cache
    timing_cache = config.get_timing_cache() if cache_path else None
    if timing_cache is not None:
        with atomic_output(cache_path) as tmp:
            tmp.write_bytes(bytes(timing_cache.serialize()))
    network_onnx = Path(record.pop("network_onnx"))
    return write_manifest(
        plan.engine,
        Kind.ENGINE,
        onnx=str(plan.source),
        network_onnx={"file": str(network_onnx), "sha256": sha256_file(network_onnx)},
        backend=plan.backend.name,
        backend_version=plan.backend.version,
        precision=plan.target,
        target_compute_capabilities=plan.targets,
        gpu_compute_capability=current_compute_capability() if plan.backend.name == TENSORRT else None,
        timing_cache_file=str(cache_path) if cache_path else None,
        **record,
    )


def _legacy_calibration(plan: Plan, inputs: dict) -> tuple[Any, dict] | None:
    """The legacy entropy calibrator, fed the calibration set, and its shapes, where a legacy INT8 build needs one."""
    if plan.mode != "legacy" or plan.target != "int8" or is_quantized(plan.model):
        return None
    calib = plan.settings.calib
    calib_set = calib if isinstance(calib, calibration.CalibrationSet) else calibration.load(calib)
    calibration.check_matches(calib_set, ModelInput.of_onnx(plan.model))
    cache = plan.engine.with_name(plan.engine.name + ".calibration.cache")
    batches = (calib_set.images[i : i + 64] for i in range(0, len(calib_set.images), 64))
    return legacy_calibrator(plan.backend, plan.model, plan.profiles, batches, cache, inputs)


def _check_network_inputs(network: Any, profiles: dict) -> None:
    """The parsed network must have the dynamic inputs the profile covers (the ONNX said so)."""
    for tensor in (network.get_input(i) for i in range(network.num_inputs)):
        name, shape = tensor.name, tuple(tensor.shape)  # -1 for a dynamic dimension
        if -1 in shape and name not in profiles:
            raise EdgepipeError(
                f"input {name!r} is dynamic ({_dims(shape)}) but has no shape profile",
                fix=f"pass --minShapes/--optShapes/--maxShapes {name}:...",
            )


def _show(status: Any, be: Backend, phase: str, step: int) -> None:
    """Called by the builder after each step; Ctrl-C here cancels the build."""
    status.update(f"{be.display}: {phase} ({step + 1})")
