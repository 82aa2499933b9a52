"""The engine and the ONNX its network is parsed from: the source, or its FP16/INT8 version beside the engine.

The FP16/INT8 ONNX is made by the precision stage (``pipeline.quantize``) and reused while its
manifest records the same source, calibration set and params as the build would (one rule:
``artifacts.why_stale``). The builder then runs, and the engine and its manifest are written atomically.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import quantize
from pipeline.artifacts import Kind, atomic_output, check_output, read_manifest, why_stale, write_manifest
from pipeline.build.plan import Plan, default_engine_path
from pipeline.cuda import current_compute_capability
from pipeline.digest import sha256_bytes, sha256_file
from pipeline.errors import EdgepipeError
from pipeline.images import ModelInput
from pipeline.machine import PeakRSS
from pipeline.precision import is_quantized
from pipeline.progress import console
from pipeline.progress import info as say
from pipeline.tensorrt.backend import TENSORRT, Backend
from pipeline.tensorrt.calibrator import legacy_calibrator
from pipeline.tensorrt.options import _dims, _profiles_json


@dataclass(frozen=True)
class Conversion:
    """How the FP16/INT8 ONNX is made: at a fixed height/width of a dynamic-H/W model, checked on ``data``."""

    size: tuple[int, int] | None
    input_shape: list[int] | None
    data: str | None
    reading: dict[str, Any]
    preprocess: dict[str, Any] | None
    calibration: str | None  # the sha256 of --calib, as the precision stage records it (hashed once)


def conversion(plan: Plan) -> Conversion | None:
    """The conversion of ``plan`` (at the --optShapes height/width of a dynamic-H/W model), or None when there is none."""
    if not plan.converting:
        return None
    info, size = plan.info, None
    if info.dynamic_hw and info.input_name in plan.profiles:
        opt = plan.profiles[info.input_name][1]
        size = (opt[info.hw_axes[0]], opt[info.hw_axes[1]])
    shape = [1, *info.sample_shape(*(size or (None, None)))] if size or not info.dynamic_hw else None
    s = plan.settings
    preprocess = quantize.folder_preprocess(plan.model, s.data, s.reading.get("preprocess"), s.calib)
    calib = None if s.calib is None else quantize.calibration_sha256(s.calib)
    return Conversion(size, shape, s.data, s.reading, preprocess, calib)


def intermediate_path(plan: Plan) -> Path:
    """model.fp16.onnx beside the engine."""
    return plan.engine.with_name(default_engine_path(plan.source, plan.target).stem + ".onnx")


def known_calibration(plan: Plan, source_sha: str, made: Conversion | None) -> str | None:
    """The sha256 of the calibration set the engine is built with, where it is known before converting: that of
    ``--calib``, as the precision stage records it; without it, the set drawn for the current INT8 ONNX beside
    the engine; else None (known once it is made)."""
    if plan.settings.calib is not None:
        return made.calibration if made else quantize.calibration_sha256(plan.settings.calib)
    current = _current(plan, source_sha, made) if made is not None else None
    return read_manifest(current)["inputs"].get("calibration") if current else None


def network_onnx(plan: Plan, source_sha: str, made: Conversion | None, force: bool) -> tuple[Path, dict | None]:
    """The ONNX the network is parsed from, and its check against FP32 (None when it is the source).

    ``model.int8.onnx`` beside the engine is reused while its manifest records this source and these settings.
    A file of that name made otherwise (``edgepipe quantize`` with other flags, or another build) is never
    overwritten: the build then writes ``model.int8.<settings key>.onnx``, its own name for these settings.
    """
    if made is None:
        return plan.source, None
    current = _current(plan, source_sha, made)
    if current is not None:
        check = quantize.check_summary(read_manifest(current))
        calibrated = " and calibration set" if plan.target == "int8" else ""
        checked = f"; checked against FP32 on {check['on']}" if check else ""
        say(f"Precision: reusing {current} (made from the same ONNX{calibrated} and settings){checked}")
        return current, check
    output, own = intermediate_path(plan), True
    if output.exists():
        output, own = _keyed_path(plan, source_sha, made), False
        why = _why_stale(intermediate_path(plan), plan, source_sha, made)
        say(f"Precision: keeping {intermediate_path(plan)}, which {why}; writing {output}")
    if output.resolve() == plan.source.resolve():
        raise EdgepipeError(
            f"the {plan.target.upper()} model would overwrite its source {plan.source}",
            fix="rename the source ONNX, or pass --saveEngine in another folder",
        )
    say(f"Precision: converting {plan.source} to {plan.target.upper()} -> {output}")
    quantize.convert(
        plan.target,
        plan.source,
        output,
        calib=plan.settings.calib,
        force=force or not own,  # the keyed name is the build's own: a stale one is remade
        data=made.data,
        size=made.size,
        size_flag="--optShapes",
        **made.reading,
    )
    return output, quantize.check_summary(read_manifest(output))


def _current(plan: Plan, source_sha: str, made: Conversion) -> Path | None:
    """The FP16/INT8 ONNX beside the engine (its plain or its keyed name) made from this source with these settings."""
    for path in (intermediate_path(plan), _keyed_path(plan, source_sha, made)):
        if path.resolve() != plan.source.resolve() and _why_stale(path, plan, source_sha, made) is None:
            return path
    return None


def _why_stale(path: Path, plan: Plan, source_sha: str, made: Conversion) -> str | None:
    """The one reuse rule (``artifacts.why_stale``) on exactly the inputs and params the precision stage records."""
    manifest = read_manifest(path) if path.is_file() else None
    if manifest is None:
        return why_stale(path, Kind.ONNX, {}, {})
    recorded = manifest.get("inputs", {})
    inputs = {"onnx": source_sha}
    if plan.target == "int8":
        # A calibration set drawn by default is fixed by the source model and data (seed 0).
        inputs["calibration"] = made.calibration or recorded.get("calibration")
    return why_stale(path, Kind.ONNX, inputs, _params(plan, made, manifest.get("params", {})))


def _params(plan: Plan, made: Conversion, recorded: dict[str, Any]) -> dict[str, Any]:
    """The params the precision stage records when the build converts with ``made`` (its defaults otherwise)."""
    shared = {"input_shape": made.input_shape, "data": made.data, "preprocess": made.preprocess}
    if plan.target == "int8":
        return {"precision": "int8", **quantize.Int8Settings().recipe([]), **quantize.Budget().record(), **shared}
    # The ops kept in FP32 are a fact of the source graph, fixed by its sha256.
    return {"precision": "fp16", "keep_io_types": True, "fp32_ops": recorded.get("fp32_ops"), **shared}


def _keyed_path(plan: Plan, source_sha: str, made: Conversion) -> Path:
    """model.int8.<key>.onnx: the key is the sha256 of the source, calibration set and settings (8 hex digits)."""
    key = {"onnx": source_sha, "calibration": made.calibration, "params": _params(plan, made, {})}
    digest = sha256_bytes(json.dumps(key, sort_keys=True, default=str).encode())[:8]
    plain = intermediate_path(plan)
    return plain.with_name(f"{plain.stem}.{digest}.onnx")


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
    import calibration  # PIL and the draw: only a legacy INT8 build pays for them

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
