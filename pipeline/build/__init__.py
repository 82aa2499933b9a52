"""Build a TensorRT or TensorRT-RTX engine from an ONNX model, with a manifest beside it.

Precision is explicit by default: ``--fp16``/``--int8`` first make an FP16 or Q/DQ INT8 ONNX beside the
engine (checked against FP32, the check recorded in the engine's manifest), then build it as a strongly
typed network; an ONNX already FP16 or Q/DQ is built as it is. On TensorRT <= 10.x ``legacy_precision``
uses the builder's FP16/INT8 flags and an entropy calibrator instead.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pipeline.artifacts import Kind, read_manifest, why_stale
from pipeline.build import engine as builder
from pipeline.build.plan import Plan, default_engine_path, make_plan
from pipeline.digest import sha256_file
from pipeline.errors import EdgepipeError
from pipeline.progress import info as say
from pipeline.tensorrt.backend import TENSORRT
from pipeline.tensorrt.options import BuildSettings


def build_engine(
    onnx_path: str | Path,
    settings: BuildSettings | None = None,
    *,
    save_engine: str | Path | None = None,
    force: bool = False,
    **flags: Any,
) -> dict[str, Any]:
    """Build (or reuse) the engine for ``onnx_path`` and return what --json prints; every refusal comes before
    the first message. ``settings``, or the keywords ``BuildSettings.parse`` reads (``precision="fp16"``,
    ``shapes={"opt": "input:8x3x224x224"}``, ``compute_capability=["8.6"]``, trtexec's controls)."""
    if settings is not None and flags:
        raise TypeError("pass a BuildSettings or its keywords, not both")
    started = time.perf_counter()
    plan = make_plan(onnx_path, settings or BuildSettings.parse(**flags), save_engine)
    plan.backend.logger.verbose = plan.settings.verbose
    made = builder.conversion(plan)
    inputs = {"onnx": sha256_file(plan.source)}
    calibration = builder.known_calibration(plan, inputs["onnx"], made) if plan.calibrated else None
    params = builder.params(plan, made.preprocess if made else None)
    if plan.settings.backend == "auto":
        installed = "is installed" if plan.backend.name == TENSORRT else "is not installed"
        say(f"Backend: {plan.backend.display} (auto: standard TensorRT {installed})")
    drawn = plan.calibrated and calibration is None  # the set drawn for the INT8 ONNX is known once it is made
    inputs.update({"calibration": calibration} if calibration else {})
    if drawn:  # an engine already there must not differ in anything else before the INT8 ONNX is made
        recorded = ((read_manifest(plan.engine) or {}).get("inputs") or {}).get("calibration")
        _refuse_stale(plan, {**inputs, "calibration": recorded}, params, force)
    elif reused := _reuse(plan, inputs, params, force, started):
        return reused
    network_onnx, check = builder.network_onnx(plan, inputs["onnx"], made, force)
    if drawn:
        inputs["calibration"] = read_manifest(network_onnx)["inputs"]["calibration"]
        if reused := _reuse(plan, inputs, params, force, started):
            return reused
    if plan.profile_note:
        say(plan.profile_note)
    cc_text = f"; targets compute capability {', '.join(plan.targets)}" if plan.targets else ""
    say(
        f"Building {plan.engine} from {network_onnx} with {plan.backend.display} ({plan.target}, {plan.mode} precision{cc_text})"
    )
    serialized, config, figures = builder.build_serialized(plan, network_onnx, inputs)
    record = {"inputs": inputs, "params": params, "network_onnx": str(network_onnx), "precision_check": check}
    manifest = builder.write_engine(plan, serialized, config, {**record, **figures})
    return _result(manifest, plan.engine, started, cached=False)


def _reuse(plan: Plan, inputs: dict, params: dict, force: bool, started: float) -> dict[str, Any] | None:
    """The result of the engine already there when it is current (and not forced); one clear error when it is not."""
    if force or not plan.engine.exists():
        return None
    _refuse_stale(plan, inputs, params, force)
    say(f"{plan.engine} is up to date (same ONNX, settings and {plan.backend.display}); reusing it (--force rebuilds)")
    return _result(read_manifest(plan.engine), plan.engine, started, cached=True)


def _refuse_stale(plan: Plan, inputs: dict, params: dict, force: bool) -> None:
    """One clear error when the engine already there was made from other inputs or settings (and not forced)."""
    stale = None if force or not plan.engine.exists() else why_stale(plan.engine, Kind.ENGINE, inputs, params)
    if stale is not None:
        raise EdgepipeError(
            f"{plan.engine} exists but {stale}", fix="pass --force to rebuild it, or choose another --saveEngine"
        )


# What --json prints of the engine's manifest as it is recorded there.
_RESULT_KEYS = ("backend", "backend_version", "precision", "onnx", "bytes", "build_seconds", "peak_rss_mib")


def _result(manifest: dict, engine: Path, started: float, cached: bool) -> dict[str, Any]:
    return {
        "engine": str(engine),
        **{key: manifest[key] for key in _RESULT_KEYS},
        "seconds": round(time.perf_counter() - started, 3),
        "cached": cached,
        "network_onnx": manifest["network_onnx"]["file"],
        "profiles": manifest["params"]["profiles"],
        "compute_capabilities": manifest["target_compute_capabilities"],
        "manifest": str(engine) + ".manifest.json",
        "check": manifest.get("precision_check"),
    }
