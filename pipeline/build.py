"""Build a TensorRT or TensorRT-RTX engine from an ONNX model, with a manifest beside it.

Precision is explicit by default: ``--fp16``/``--int8`` first make an FP16 or Q/DQ INT8 ONNX
(the precision stage, written beside the engine and reused while it is current), then the engine
is built from it as a strongly typed network, which TensorRT 10.x, 11.x and TensorRT-RTX all
support. That works for any single-image-input ONNX, with or without edgepipe's metadata: the
converted model is checked against FP32 (held-out data, the user's ``--data``, or seeded
synthetic inputs for FP16) and the engine's manifest records the check. A dynamic-H/W model is
converted at its --optShapes size. An ONNX that already holds Q/DQ nodes, or is already FP16, is
built as it is. On TensorRT <= 10.x ``legacy_precision`` uses the builder's FP16/INT8 flags and
an entropy calibrator instead.

Flags are parsed in ``pipeline.tensorrt.options``; every TensorRT vs TensorRT-RTX difference lives in
``pipeline.tensorrt``. Reuse follows the one rule of ``pipeline.artifacts``: the engine's manifest.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pipeline import quantize
from pipeline.artifacts import Kind, atomic_output, check_output, read_manifest, sha256_file, why_stale, write_manifest
from pipeline.cuda import current_compute_capability
from pipeline.errors import EdgepipeError
from pipeline.machine import PeakRSS
from pipeline.onnxfile import load_onnx
from pipeline.onnxinfo import ModelInfo, check_profile_shapes, describe
from pipeline.precision import Precision, is_quantized, of_onnx, parse
from pipeline.progress import console
from pipeline.tensorrt.backend import TENSORRT, Backend, BuildSettings, get_backend
from pipeline.tensorrt.calibrator import legacy_calibrator
from pipeline.tensorrt.options import (
    _dims,
    _hardware_compatibility,
    _profiles_json,
    onnx_inputs,
    parse_mem_pool_size,
    parse_shapes,
    resolve_profiles,
)
from pipeline.tensorrt.targets import resolve_compute_capabilities

# --- the public API --------------------------------------------------------------------------------


def build_engine(
    onnx_path: str | Path,
    precision: str | None = None,
    save_engine: str | Path | None = None,
    calib: Any = None,
    backend: str = "auto",
    shapes: dict[str, Any] | None = None,
    force: bool = False,
    *,
    legacy_precision: bool = False,
    mem_pool_size: str | dict[str, int] | None = None,
    builder_optimization_level: int | None = None,
    timing_cache_file: str | Path | None = None,
    use_dla_core: int | None = None,
    allow_gpu_fallback: bool = False,
    hardware_compatibility_level: str | None = None,
    version_compatible: bool = False,
    compute_capability: list[str] | tuple[str, ...] | None = None,
    verbose: bool = False,
    data: str | None = None,
    reading: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build (or reuse) the engine for ``onnx_path`` and return what --json prints.

    ``precision``: "fp32", "fp16", "int8", or None to build the model at the precision it has.
    ``shapes``: {"min"|"opt"|"max": "input:1x1x32x32" (trtexec syntax) or {name: shape}}.
    ``compute_capability``: TensorRT-RTX targets as "X.Y" (or "current").
    ``data``: the user's images to check an FP16/INT8 conversion on (and draw INT8 calibration from);
    ``reading``: how a folder of them is read (``preprocess`` flags, ``labels``, ``workers``).
    """
    started = time.perf_counter()
    precision = None if precision is None else parse(precision)
    if calib is not None and precision is not Precision.INT8:
        raise EdgepipeError("a calibration set is only used for INT8", fix="add --int8, or drop --calib")
    if use_dla_core is not None and use_dla_core < 0:
        raise EdgepipeError(f"--useDLACore must be 0 or more, got {use_dla_core}", fix="pass --useDLACore 0 or 1")
    if builder_optimization_level is not None and not 0 <= builder_optimization_level <= 5:
        raise EdgepipeError(
            f"--builderOptimizationLevel must be 0-5, got {builder_optimization_level}",
            fix="pass a level from 0 (fastest build) to 5 (3 is the default)",
        )

    source = Path(onnx_path)
    model = load_onnx(source)
    be = get_backend(backend)
    be.logger.verbose = verbose
    _announce_backend(be, backend)

    graph_precision = of_onnx(model)
    target = precision or graph_precision
    mode = "legacy" if legacy_precision else "explicit"
    if legacy_precision:
        be.check_settings(BuildSettings(legacy_precision=target))  # names what the backend lacks
    if legacy_precision and target == "int8" and graph_precision != "int8" and calib is None:
        raise EdgepipeError(
            "legacy INT8 calibration needs a calibration set",
            fix="pass --calib CALIB.npz, or drop --legacy-precision (explicit INT8 draws one from the training data)",
        )
    if mode == "explicit" and target != graph_precision and graph_precision != "fp32":
        raise EdgepipeError(
            f"{source} is already {graph_precision.upper()}; it cannot be built as {target.upper()}",
            fix=f"build it without a precision flag (it builds as {graph_precision.upper()}), or start from the FP32 ONNX",
        )

    engine = Path(save_engine) if save_engine else default_engine_path(source, target)
    check_output(engine, force=True)  # a folder that can be written (existing files are handled below)

    converting = mode == "explicit" and target != graph_precision
    info = _image_input(model, required=converting)
    profiles, profile_note = resolve_profiles(onnx_inputs(model), shapes)
    if info is not None:  # dimensions sharing one symbolic name, which TensorRT requires equal
        check_profile_shapes(
            info,
            {
                f"--{kind}Shapes": parse_shapes((shapes or {}).get(kind), f"--{kind}Shapes")
                for kind in ("min", "opt", "max")
            },
        )
    settings = BuildSettings(
        profiles=[profiles] if profiles else [],
        legacy_precision=target if legacy_precision else None,
        memory_pools=parse_mem_pool_size(mem_pool_size),
        optimization_level=builder_optimization_level,
        dla_core=use_dla_core,
        gpu_fallback=allow_gpu_fallback,
        hardware_compatibility=_hardware_compatibility(hardware_compatibility_level),
        version_compatible=version_compatible,
    )
    be.check_settings(settings)
    settings.compute_capabilities, targets = resolve_compute_capabilities(be, compute_capability)

    calib_sha = _calibration_sha(calib) if target == "int8" and graph_precision != "int8" else None
    inputs = {"onnx": sha256_file(source)}
    if calib_sha:
        inputs["calibration"] = calib_sha
    params = {
        "precision": target,
        "precision_mode": mode,
        "backend": be.name,
        "backend_version": be.version,
        "profiles": _profiles_json(profiles),
        "compute_capabilities": settings.compute_capabilities,
        "memory_pools": settings.memory_pools,
        "builder_optimization_level": builder_optimization_level,
        "dla_core": use_dla_core,
        "gpu_fallback": allow_gpu_fallback,
        "hardware_compatibility_level": settings.hardware_compatibility,
        "version_compatible": version_compatible,
        "data": data,
        "preprocess": quantize.folder_preprocess(model, data, (reading or {}).get("preprocess"), calib)
        if converting
        else None,
    }

    if engine.exists():
        stale = why_stale(engine, Kind.ENGINE, inputs, params)
        if not force and stale is None:
            _say(f"{engine} is up to date (same ONNX, settings and {be.display}); reusing it (--force rebuilds)")
            return _result(read_manifest(engine), engine, started, cached=True)
        if not force:
            raise EdgepipeError(
                f"{engine} exists but {stale}", fix="pass --force to rebuild it, or choose another --saveEngine"
            )
    if profile_note:
        _say(profile_note)

    conversion = (
        {**_conversion(info, profiles, data), "reading": reading or {}, "preprocess": params["preprocess"]}
        if converting
        else {}
    )
    network_onnx, check = _network_onnx(source, inputs, graph_precision, target, mode, engine, calib, force, conversion)
    cc_text = f"; targets compute capability {', '.join(targets)}" if targets else ""
    _say(f"Building {engine} from {network_onnx} with {be.display} ({target}, {mode} precision{cc_text})")

    with PeakRSS() as memory:
        build_started = time.perf_counter()
        builder, network, _parser = be.parse_onnx(network_onnx, strongly_typed=(mode == "explicit"))
        _check_network_inputs(be, network, profiles)
        cache_path = Path(timing_cache_file) if timing_cache_file else None
        settings.timing_cache = _read_timing_cache(cache_path) if cache_path else None
        if mode == "legacy" and target == "int8" and not is_quantized(model):
            settings.calibrator, settings.calibration_shapes = legacy_calibrator(
                be, model, profiles, calib, engine, inputs
            )
        config = be.builder_config(builder, network, settings)
        with console.status(f"Building with {be.display}...") as status:
            try:
                serialized = be.build(
                    builder, network, config, on_step=lambda phase, step: _show_step(status, be, phase, step)
                )
            except EdgepipeError:
                calibration_error = getattr(settings.calibrator, "exception", None)
                if calibration_error is not None:
                    raise calibration_error
                raise
        build_seconds = time.perf_counter() - build_started

    with atomic_output(engine) as tmp:
        tmp.write_bytes(serialized)
    if cache_path:
        timing_cache = be.timing_cache_bytes(config)
        if timing_cache:
            with atomic_output(cache_path) as tmp:
                tmp.write_bytes(timing_cache)
    manifest = write_manifest(
        engine,
        Kind.ENGINE,
        inputs=inputs,
        params=params,
        onnx=str(source),
        network_onnx={"file": str(network_onnx), "sha256": sha256_file(network_onnx)},
        backend=be.name,
        backend_version=be.version,
        precision=target,
        target_compute_capabilities=targets,
        gpu_compute_capability=current_compute_capability() if be.name == TENSORRT else None,
        build_seconds=round(build_seconds, 3),
        peak_rss_mib=round(memory.peak / 2**20, 1),
        timing_cache_file=str(cache_path) if cache_path else None,
        precision_check=check,
    )
    return _result(manifest, engine, started, cached=False)


# --- names, shapes and settings --------------------------------------------------------------------


def default_engine_path(onnx_path: Path, precision: str) -> Path:
    """model.onnx -> model.fp16.engine beside it (model.fp16.onnx -> model.fp16.engine too)."""
    stem = onnx_path.stem
    base, _, suffix = stem.rpartition(".")
    if base and suffix in {p.value for p in Precision}:
        stem = base
    return onnx_path.with_name(f"{stem}.{precision}.engine")


# --- precision --------------------------------------------------------------------------------------


def _network_onnx(
    source: Path,
    inputs: dict,
    graph_precision: str,
    target: str,
    mode: str,
    engine: Path,
    calib: Any,
    force: bool,
    conversion: dict[str, Any],
) -> tuple[Path, dict[str, Any] | None]:
    """The ONNX the network is parsed from (the source, or its FP16/INT8 version beside the engine) and its check against FP32."""
    if mode == "legacy" or target == graph_precision:
        return source, None
    stem = default_engine_path(source, target).stem  # model.fp16
    output = engine.with_name(f"{stem}.onnx")
    if output.resolve() == source.resolve():
        raise EdgepipeError(
            f"the {target.upper()} model would overwrite its source {source}",
            fix="rename the source ONNX, or pass --saveEngine in another folder",
        )
    if output.exists() and _intermediate_is_current(output, inputs["onnx"], target, calib, conversion):
        check = quantize.check_summary(read_manifest(output))
        _say(
            f"Precision: reusing {output} (made from the same ONNX{' and calibration set' if target == 'int8' else ''})"
            + (f"; checked against FP32 on {check['on']}" if check else "")
        )
        return output, check
    _say(f"Precision: converting {source} to {target.upper()} -> {output}")
    quantize.convert(
        target,
        source,
        output,
        calib=calib,
        force=force,
        data=conversion["data"],
        size=conversion["size"],
        size_flag="--optShapes",
        **conversion["reading"],
    )
    return output, quantize.check_summary(read_manifest(output))


def _intermediate_is_current(
    output: Path, source_sha: str, target: str, calib: Any, conversion: dict[str, Any]
) -> bool:
    """True when the FP16/INT8 ONNX beside the engine was made from this source (and calibration set), shape and data."""
    manifest = read_manifest(output)
    if (
        not manifest
        or manifest.get("params", {}).get("precision") != target
        or manifest.get("sha256") != sha256_file(output)
    ):
        return False
    params, made_from = manifest["params"], manifest.get("inputs", {})
    if (
        made_from.get("onnx") != source_sha
        or params.get("data") != conversion["data"]
        or params.get("input_shape") != conversion["input_shape"]
        or params.get("preprocess") != conversion["preprocess"]
    ):
        return False
    # A calibration set drawn by default is fixed by the source model (its training data, seed 0).
    return target != "int8" or calib is None or made_from.get("calibration") == _calibration_sha(calib)


def _image_input(model: Any, required: bool) -> ModelInfo | None:
    """The model's single image input as edgepipe reads it; a model it cannot read so is only an error where it is ``required``."""
    try:
        return describe(model)
    except EdgepipeError:
        if required:
            raise
        return None


def _conversion(info: ModelInfo, profiles: dict, data: str | None) -> dict[str, Any]:
    """How the FP16/INT8 conversion runs: at the --optShapes height/width of a dynamic-H/W model, checked on ``data``."""
    size = None
    if info.dynamic_hw and info.input_name in profiles:
        opt = profiles[info.input_name][1]
        size = (opt[info.hw_axes[0]], opt[info.hw_axes[1]])
    shape = [1, *info.sample_shape(*(size or (None, None)))] if size or not info.dynamic_hw else None
    return {"size": size, "data": data, "input_shape": shape}


def _calibration_sha(calib: Any) -> str:
    """The calibration set's content sha256 (as the precision stage records it), or "default"."""
    if calib is None:
        return "default"  # drawn from the model's training data named in its ONNX metadata
    return quantize.calibration_sha256(calib)


# --- checks and results -----------------------------------------------------------------------------


def _check_network_inputs(be: Backend, network: Any, profiles: dict) -> None:
    """The parsed network must have the dynamic inputs the profile covers (the ONNX said so)."""
    for name, shape in be.network_inputs(network):
        if -1 in shape and name not in profiles:
            raise EdgepipeError(
                f"input {name!r} is dynamic ({_dims(shape)}) but has no shape profile",
                fix=f"pass --minShapes/--optShapes/--maxShapes {name}:...",
            )


def _result(manifest: dict, engine: Path, started: float, cached: bool) -> dict[str, Any]:
    return {
        "engine": str(engine),
        "backend": manifest["backend"],
        "backend_version": manifest["backend_version"],
        "precision": manifest["precision"],
        "seconds": round(time.perf_counter() - started, 3),
        "cached": cached,
        "onnx": manifest["onnx"],
        "network_onnx": manifest["network_onnx"]["file"],
        "profiles": manifest["params"]["profiles"],
        "compute_capabilities": manifest["target_compute_capabilities"],
        "bytes": manifest["bytes"],
        "build_seconds": manifest["build_seconds"],
        "peak_rss_mib": manifest["peak_rss_mib"],
        "manifest": str(engine) + ".manifest.json",
        "check": manifest.get("precision_check"),
    }


def _announce_backend(be: Backend, requested: str) -> None:
    if requested == "auto":
        why = "standard TensorRT is installed" if be.name == TENSORRT else "standard TensorRT is not installed"
        _say(f"Backend: {be.display} (auto: {why})")


def _read_timing_cache(path: Path) -> bytes:
    check_output(path, force=True)
    return path.read_bytes() if path.is_file() else b""


def _show_step(status: Any, be: Backend, phase: str, step: int) -> None:
    """Called by the builder after each step; Ctrl-C here cancels the build."""
    status.update(f"{be.display}: {phase} ({step + 1})")


def _say(message: str) -> None:
    """One message on stderr, on one line however narrow the terminal."""
    console.print(message, soft_wrap=True, markup=False)
