"""Build a TensorRT or TensorRT-RTX engine from an ONNX model, with a manifest beside it.

Precision is explicit by default: ``--fp16``/``--int8`` first make an FP16 or Q/DQ INT8 ONNX
(the precision stage, written beside the engine and reused while it is current), then the engine
is built from it as a strongly typed network, which TensorRT 10.x, 11.x and TensorRT-RTX all
support. An ONNX that already holds Q/DQ nodes, or is already FP16, is built as it is. On
TensorRT <= 10.x ``legacy_precision`` uses the builder's FP16/INT8 flags and an entropy
calibrator instead.

A dynamic-batch model built without shapes gets the profile batch 1 (min) / 1 (opt) / 64 (max):
batch 1 is the latency case the engine is tuned for, and 64 is the batch edgepipe's validation
and benchmarks feed, so they run without splitting batches.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

from pipeline import backend as backendmod
from pipeline.artifacts import atomic_output, check_output, is_up_to_date, read_manifest, sha256_file, write_manifest
from pipeline.errors import EdgepipeError
from pipeline.onnxfile import load_onnx
from pipeline.progress import console

KIND = "engine"
PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_BATCH = (1, 1, 64)  # min, opt, max of a dynamic batch when no shapes are given
CALIBRATION_BATCH = 32
DEFAULT_MIN_MAJOR = 8  # default TensorRT-RTX targets without a GPU: Ampere and newer
RSS_SAMPLE_SECONDS = 0.02


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
) -> dict[str, Any]:
    """Build (or reuse) the engine for ``onnx_path`` and return what --json prints.

    ``precision``: "fp32", "fp16", "int8", or None to build the model at the precision it has.
    ``shapes``: {"min"|"opt"|"max": "input:1x1x32x32" (trtexec syntax) or {name: shape}}.
    ``compute_capability``: TensorRT-RTX targets as "X.Y" (or "current").
    """
    started = time.perf_counter()
    if precision not in (None, *PRECISIONS):
        raise EdgepipeError(f"unknown precision {precision!r}", fix="use fp32, fp16 or int8")
    if calib is not None and precision != "int8":
        raise EdgepipeError("a calibration set is only used for INT8", fix="add --int8, or drop --calib")
    if use_dla_core is not None and use_dla_core < 0:
        raise EdgepipeError(f"--useDLACore must be 0 or more, got {use_dla_core}", fix="pass --useDLACore 0 or 1")
    if builder_optimization_level is not None and not 0 <= builder_optimization_level <= 5:
        raise EdgepipeError(f"--builderOptimizationLevel must be 0-5, got {builder_optimization_level}", fix="pass a level from 0 (fastest build) to 5 (3 is the default)")

    source = Path(onnx_path)
    model = load_onnx(source)
    be = backendmod.get_backend(backend)
    be.logger.verbose = verbose
    _announce_backend(be, backend)

    graph_precision = _detect_precision(model)
    target = precision or graph_precision
    mode = "legacy" if legacy_precision else "explicit"
    if legacy_precision:
        be.check_settings(backendmod.BuildSettings(legacy_precision=target))  # names what the backend lacks
    if legacy_precision and target == "int8" and graph_precision != "int8" and calib is None:
        raise EdgepipeError("legacy INT8 calibration needs a calibration set", fix="pass --calib CALIB.npz, or drop --legacy-precision (explicit INT8 draws one from the training data)")
    if mode == "explicit" and target != graph_precision and graph_precision != "fp32":
        raise EdgepipeError(
            f"{source} is already {graph_precision.upper()}; it cannot be built as {target.upper()}",
            fix=f"build it without a precision flag (it builds as {graph_precision.upper()}), or start from the FP32 ONNX",
        )

    engine = Path(save_engine) if save_engine else default_engine_path(source, target)
    check_output(engine, force=True)  # a folder that can be written (existing files are handled below)

    profiles, profile_note = resolve_profiles(onnx_inputs(model), shapes)
    settings = backendmod.BuildSettings(
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
    settings.compute_capabilities, targets = _resolve_compute_capabilities(be, compute_capability)

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
    }

    if engine.exists():
        if not force and is_up_to_date(engine, KIND, inputs, params):
            _say(f"{engine} is up to date (same ONNX, settings and {be.display}); reusing it (--force rebuilds)")
            return _result(read_manifest(engine), engine, started, cached=True)
        if not force:
            raise EdgepipeError(f"{engine} exists but {_why_different(engine, inputs, params)}", fix="pass --force to rebuild it, or choose another --saveEngine")
    if profile_note:
        _say(profile_note)

    network_onnx = _network_onnx(source, inputs, graph_precision, target, mode, engine, calib, force)
    cc_text = f"; targets compute capability {', '.join(targets)}" if targets else ""
    _say(f"Building {engine} from {network_onnx} with {be.display} ({target}, {mode} precision{cc_text})")

    with _PeakRSS() as memory:
        build_started = time.perf_counter()
        builder, network, _parser = be.parse_onnx(network_onnx, strongly_typed=(mode == "explicit"))
        _check_network_inputs(be, network, profiles)
        cache_path = Path(timing_cache_file) if timing_cache_file else None
        settings.timing_cache = _read_timing_cache(cache_path) if cache_path else None
        if mode == "legacy" and target == "int8" and not _has_qdq(model):
            settings.calibrator, settings.calibration_shapes = _legacy_calibrator(be, model, profiles, calib, engine, inputs)
        config = be.builder_config(builder, network, settings)
        with console.status(f"Building with {be.display}...") as status:
            try:
                serialized = be.build(builder, network, config, on_step=lambda phase, step: _show_step(status, be, phase, step))
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
        engine, KIND, inputs=inputs, params=params,
        onnx=str(source),
        network_onnx={"file": str(network_onnx), "sha256": sha256_file(network_onnx)},
        backend=be.name,
        backend_version=be.version,
        precision=target,
        target_compute_capabilities=targets,
        gpu_compute_capability=backendmod.current_compute_capability() if be.name == backendmod.TENSORRT else None,
        build_seconds=round(build_seconds, 3),
        peak_rss_mib=round(memory.peak / 2**20, 1),
        timing_cache_file=str(cache_path) if cache_path else None,
    )
    return _result(manifest, engine, started, cached=False)


def check_engine_runtime(engine_path: str | Path, backend: Any, device_compute_capability: str | None) -> dict[str, Any]:
    """The engine's manifest, after checking it was built for this backend, version and GPU.

    ``backend`` is a ``Backend`` or a backend name; ``device_compute_capability`` is "X.Y" of the
    GPU that will run the engine (None skips that check). A mismatch is a clear error instead of a
    crash inside TensorRT.
    """
    engine = Path(engine_path)
    if not engine.is_file():
        raise EdgepipeError(f"engine {engine} does not exist", fix="build it with 'build-engine MODEL.onnx'")
    be = backend if isinstance(backend, backendmod.Backend) else backendmod.get_backend(backend)
    manifest = read_manifest(engine)
    rebuild = f"rebuild it here with 'build-engine {manifest.get('onnx', 'MODEL.onnx') if manifest else 'MODEL.onnx'} --saveEngine {engine} --force'"
    if manifest is None or manifest.get("kind") != KIND:
        raise EdgepipeError(f"{engine} has no edgepipe engine manifest, so it cannot be checked against this runtime", fix=rebuild)
    if manifest.get("bytes") != engine.stat().st_size or manifest.get("sha256") != sha256_file(engine):
        raise EdgepipeError(f"{engine} does not match its manifest (truncated or replaced since it was built)", fix=rebuild)
    built = f"{backendmod.DISPLAY_NAMES.get(manifest['backend'], manifest['backend'])} {manifest['backend_version']}"
    if manifest["backend"] != be.name:
        raise EdgepipeError(f"{engine} was built with {built}, but this runtime is {be.display}", fix=f"load it with --backend {manifest['backend']}, or {rebuild}")
    if not _version_can_load(manifest, be.version):
        raise EdgepipeError(f"{engine} was built with {built}, but this runtime is {be.display}; engines load only with the version that built them", fix=rebuild)
    if device_compute_capability:
        device = backendmod.normalize_compute_capability(device_compute_capability)
        targets = manifest.get("target_compute_capabilities") or []
        if manifest["backend"] == backendmod.TENSORRT_RTX and targets and device not in targets:
            raise EdgepipeError(
                f"{engine} targets compute capability {', '.join(targets)}, but this GPU is {device}",
                fix=f"{rebuild} (or add --computeCapability {device} when building ahead of time)",
            )
        built_on = manifest.get("gpu_compute_capability")
        if manifest["backend"] == backendmod.TENSORRT and built_on and not _hardware_compatible(manifest, built_on, device):
            raise EdgepipeError(
                f"{engine} was built on a GPU of compute capability {built_on}, but this GPU is {device}",
                fix=f"{rebuild} (or build with --hardwareCompatibilityLevel ampere+ for Ampere and newer GPUs)",
            )
    return manifest


# --- names, shapes and settings --------------------------------------------------------------------


def default_engine_path(onnx_path: Path, precision: str) -> Path:
    """model.onnx -> model.fp16.engine beside it (model.fp16.onnx -> model.fp16.engine too)."""
    stem = onnx_path.stem
    base, _, suffix = stem.rpartition(".")
    if base and suffix in PRECISIONS:
        stem = base
    return onnx_path.with_name(f"{stem}.{precision}.engine")


def parse_shapes(text: str | dict | None, option: str = "--shapes") -> dict[str, tuple[int, ...]]:
    """trtexec's "input:1x3x32x32,other:1x8" -> {"input": (1, 3, 32, 32), "other": (1, 8)}."""
    if not text:
        return {}
    if isinstance(text, dict):
        return {name: tuple(int(d) for d in shape) for name, shape in text.items()}
    shapes = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, dims = item.rpartition(":")
        name = name.strip("'\"")
        if not sep or not name or not re.fullmatch(r"\d+(x\d+)*", dims):
            raise EdgepipeError(f"{option} {item!r} is not NAME:DIMS", fix=f"write it as trtexec does, e.g. {option} input:1x1x32x32 (several inputs separated by commas)")
        shapes[name] = tuple(int(d) for d in dims.split("x"))
    return shapes


def onnx_inputs(model: Any) -> list[tuple[str, tuple[int, ...]]]:
    """Name and shape (-1 for a dynamic dimension) of each real input of the ONNX graph."""
    initializers = {init.name for init in model.graph.initializer}
    result = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        result.append((value.name, tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in dims)))
    return result


def resolve_profiles(inputs: list[tuple[str, tuple[int, ...]]], shapes: dict[str, Any] | None) -> tuple[dict, str | None]:
    """{input: (min, opt, max)} for the dynamic inputs, checked against the model; plus a note.

    A missing min or max takes the opt shape, a missing opt takes max (trtexec fills them the same
    way). Static models need no profile; shapes given for them must equal their shape.
    """
    shapes = shapes or {}
    given = {kind: parse_shapes(shapes.get(kind), f"--{kind}Shapes") for kind in ("min", "opt", "max")}
    known = dict(inputs)
    for kind, by_name in given.items():
        for name in by_name:
            if name not in known:
                raise EdgepipeError(
                    f"--{kind}Shapes names input {name!r}, which the model does not have (inputs: {', '.join(known)})",
                    fix=f"use the model's input name, e.g. --{kind}Shapes {next(iter(known), 'input')}:{_dims(known.get(next(iter(known), ''), ()))}",
                )
    profiles, notes = {}, []
    for name, shape in inputs:
        lo, opt, hi = (given[kind].get(name) for kind in ("min", "opt", "max"))
        if lo is None and opt is None and hi is None:
            if -1 not in shape:
                continue
            if -1 in shape[1:]:
                raise EdgepipeError(f"input {name!r} has dynamic dimensions besides the batch ({_dims(shape)})", fix=f"pass --minShapes/--optShapes/--maxShapes {name}:..., e.g. {name}:1x3x224x224")
            lo, opt, hi = ((b, *shape[1:]) for b in DEFAULT_BATCH)
            notes.append(f"{name}: batch {'/'.join(map(str, DEFAULT_BATCH))}")
        opt = opt or hi or lo
        lo, hi = lo or opt, hi or opt
        _check_profile(name, shape, lo, opt, hi)
        if -1 in shape:
            profiles[name] = (lo, opt, hi)
    note = None
    if notes:
        note = (f"Dynamic batch and no --minShapes/--optShapes/--maxShapes: using min/opt/max {', '.join(notes)} "
                "(pass the shape flags for another range)")
    return profiles, note


def _check_profile(name: str, shape: tuple[int, ...], lo: tuple, opt: tuple, hi: tuple) -> None:
    for kind, dims in (("min", lo), ("opt", opt), ("max", hi)):
        if len(dims) != len(shape):
            raise EdgepipeError(f"--{kind}Shapes {name}:{_dims(dims)} has {len(dims)} dimensions, but the input has {len(shape)} ({_dims(shape)})", fix=f"give {len(shape)} dimensions, e.g. {name}:{_dims(shape, 1)}")
        for axis, (want, got) in enumerate(zip(shape, dims)):
            if got < 1:
                raise EdgepipeError(f"--{kind}Shapes {name}:{_dims(dims)} has a dimension below 1", fix="use dimensions of 1 or more")
            if want != -1 and want != got:
                raise EdgepipeError(
                    f"--{kind}Shapes {name}:{_dims(dims)} does not fit the model's input {_dims(shape)} (dimension {axis} is fixed at {want})",
                    fix=f"keep the fixed dimensions, e.g. {name}:{_dims(shape, got if want == -1 else 1)}; export with --dynamic-batch to vary the batch",
                )
    for axis in range(len(shape)):
        if not lo[axis] <= opt[axis] <= hi[axis]:
            raise EdgepipeError(
                f"shapes for {name!r} are out of order at dimension {axis}: min {_dims(lo)}, opt {_dims(opt)}, max {_dims(hi)}",
                fix="give min <= opt <= max in every dimension",
            )


def _dims(shape: tuple, dynamic: int | None = None) -> str:
    return "x".join(str(dynamic if (d == -1 and dynamic is not None) else ("?" if d == -1 else d)) for d in shape)


def _profiles_json(profiles: dict) -> list[dict]:
    if not profiles:
        return []
    return [{name: {"min": list(lo), "opt": list(opt), "max": list(hi)} for name, (lo, opt, hi) in profiles.items()}]


def parse_mem_pool_size(value: str | dict | None) -> dict[str, int]:
    """trtexec's "workspace:1024,dlaSRAM:0.5" -> bytes per pool. A bare number is MiB; K/M/G suffixes."""
    if not value:
        return {}
    if isinstance(value, dict):
        return {pool: int(size) for pool, size in value.items()}
    pools = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        pool, sep, size = item.partition(":")
        match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGkmg]?)(?:i?[Bb])?", size.strip())
        if not sep or pool not in backendmod.MEMORY_POOLS or not match:
            raise EdgepipeError(
                f"--memPoolSize {item!r} is not POOL:SIZE",
                fix=f"write e.g. --memPoolSize workspace:1024 (MiB) or workspace:2G; pools: {', '.join(backendmod.MEMORY_POOLS)}",
            )
        unit = {"": 2**20, "k": 2**10, "m": 2**20, "g": 2**30}[match.group(2).lower()]
        pools[pool] = int(float(match.group(1)) * unit)
    return pools


def _hardware_compatibility(level: str | None) -> str | None:
    if level is None or level == "none":
        return None
    aliases = {name.lower(): name for name in backendmod.HARDWARE_COMPATIBILITY}
    aliases.update({"same-cc": "sameComputeCapability", "samecomputecapability": "sameComputeCapability", "ampere_plus": "ampere+"})
    if level.lower() not in aliases:
        raise EdgepipeError(f"--hardwareCompatibilityLevel {level!r} is unknown", fix=f"use one of {', '.join(backendmod.HARDWARE_COMPATIBILITY)}")
    return aliases[level.lower()]


def _resolve_compute_capabilities(be: backendmod.Backend, requested) -> tuple[list[str], list[str]]:
    """(what the builder is given, the concrete "X.Y" targets recorded in the manifest).

    TensorRT-RTX: the requested list; otherwise the GPU here (CURRENT), or on a machine without
    a GPU every target from Ampere (8.0) on, so one engine runs on any recent RTX GPU. Turing (7.5)
    is left out of that default because TensorRT-RTX cannot compile FP32 matrix multiplies for it;
    name it with --computeCapability 7.5 for FP16/INT8 engines.
    """
    if not be.has_compute_capability_targets:
        return [], []  # standard TensorRT builds for the GPU it runs on
    supported = be.compute_capability_targets()
    device = backendmod.current_compute_capability()
    requested = [backendmod.normalize_compute_capability(cc) for cc in (requested or [])]
    if not requested:
        requested = ["current"] if device else [cc for cc in supported if _cc_major(cc) >= DEFAULT_MIN_MAJOR]
    if "current" in requested and not device:
        raise EdgepipeError("--computeCapability current needs a GPU, and none was found here", fix=f"name the target GPUs, e.g. --computeCapability 8.9 (supported: {', '.join(supported)})")
    targets = []
    for cc in dict.fromkeys(requested):
        concrete = device if cc == "current" else cc
        if concrete not in supported:
            where = "this GPU's compute capability" if cc == "current" else "compute capability"
            raise EdgepipeError(
                f"{be.display} cannot build for {where} {concrete}",
                fix=f"pass --computeCapability with targets it supports ({', '.join(supported)}), or use standard TensorRT (--backend tensorrt) for this GPU",
            )
        targets.append(concrete)
    return list(dict.fromkeys(requested)), targets


# --- precision --------------------------------------------------------------------------------------


def _detect_precision(model: Any) -> str:
    """"fp32", "fp16" or "int8": the precision the ONNX graph already has."""
    from pipeline import precision as precisionmod

    return precisionmod.detect_precision(model)


def _has_qdq(model: Any) -> bool:
    from pipeline import precision as precisionmod

    return precisionmod.is_quantized(model)


def _network_onnx(source: Path, inputs: dict, graph_precision: str, target: str, mode: str, engine: Path, calib: Any, force: bool) -> Path:
    """The ONNX the network is parsed from: the source, or its FP16/INT8 version beside the engine."""
    if mode == "legacy" or target == graph_precision:
        return source
    from pipeline import precision as precisionmod

    stem = default_engine_path(source, target).stem  # model.fp16
    output = engine.with_name(f"{stem}.onnx")
    if output.resolve() == source.resolve():
        raise EdgepipeError(f"the {target.upper()} model would overwrite its source {source}", fix="rename the source ONNX, or pass --saveEngine in another folder")
    if output.exists() and _intermediate_is_current(output, inputs["onnx"], target, calib):
        _say(f"Precision: reusing {output} (made from the same ONNX{' and calibration set' if target == 'int8' else ''})")
        return output
    _say(f"Precision: converting {source} to {target.upper()} -> {output}")
    if target == "fp16":
        precisionmod.to_fp16(source, output, force=force)
    else:
        precisionmod.to_int8(source, output, calib=calib, force=force)
    return output


def _intermediate_is_current(output: Path, source_sha: str, target: str, calib: Any) -> bool:
    """True when the FP16/INT8 ONNX beside the engine was made from this source (and calibration set)."""
    manifest = read_manifest(output)
    if not manifest or manifest.get("params", {}).get("precision") != target or manifest.get("sha256") != sha256_file(output):
        return False
    made_from = manifest.get("inputs", {})
    if made_from.get("onnx") != source_sha:
        return False
    # A calibration set drawn by default is fixed by the source model (its training data, seed 0).
    return target != "int8" or calib is None or made_from.get("calibration") == _calibration_sha(calib)


def _calibration_sha(calib: Any) -> str:
    """The calibration set's content sha256 (as the precision stage records it), or "default"."""
    if calib is None:
        return "default"  # drawn from the model's training data named in its ONNX metadata
    return _calibration_set(calib).sha256


def _calibration_set(calib: Any) -> Any:
    import calibration

    return calib if isinstance(calib, calibration.CalibrationSet) else calibration.load(calib)


def _legacy_calibrator(be: backendmod.Backend, model: Any, profiles: dict, calib: Any, engine: Path, inputs: dict) -> tuple[Any, dict]:
    """An entropy calibrator and its fixed-shape calibration profile (TensorRT <= 10.x only)."""
    import calibration
    from calibration.tensorrt_calibrator import make_entropy_calibrator
    from pipeline.onnxfile import onnx_config

    calib_set = _calibration_set(calib)
    calibration.check_matches(calib_set, onnx_config(model))
    (name, shape), *others = onnx_inputs(model)
    if others:
        raise EdgepipeError("legacy INT8 calibration handles models with one input", fix="drop --legacy-precision: explicit INT8 handles any number of inputs")
    lo, _, hi = profiles.get(name, (shape, shape, shape))
    batch = min(max(CALIBRATION_BATCH, lo[0]), hi[0])
    calibration_shape = (batch, *shape[1:])
    cache = engine.with_name(engine.name + ".calibration.cache")
    reuse = is_up_to_date(cache, "calibration-cache", inputs, {"shape": list(calibration_shape)})
    calibrator = make_entropy_calibrator(
        be.trt, calib_set, batch, cache, read_cache=reuse,
        on_cache_written=lambda path: write_manifest(path, "calibration-cache", inputs=inputs, params={"shape": list(calibration_shape)}),
        input_shape=calibration_shape,
    )
    return calibrator, {name: calibration_shape}


# --- checks and results -----------------------------------------------------------------------------


def _check_network_inputs(be: backendmod.Backend, network: Any, profiles: dict) -> None:
    """The parsed network must have the dynamic inputs the profile covers (the ONNX said so)."""
    for name, shape in be.network_inputs(network):
        if -1 in shape and name not in profiles:
            raise EdgepipeError(f"input {name!r} is dynamic ({_dims(shape)}) but has no shape profile", fix=f"pass --minShapes/--optShapes/--maxShapes {name}:...")


def _why_different(engine: Path, inputs: dict, params: dict) -> str:
    manifest = read_manifest(engine)
    if manifest is None or manifest.get("kind") != KIND:
        return "has no edgepipe engine manifest, so it may be another model's engine"
    reasons = []
    for role, sha in inputs.items():
        if manifest.get("inputs", {}).get(role) != sha:
            reasons.append(f"another {role}" if role != "onnx" else "another ONNX model")
    old = manifest.get("params", {})
    for key, value in params.items():
        if old.get(key) != value and key not in ("profiles",):
            reasons.append(f"{key} {old.get(key)} (now {value})")
    if old.get("profiles") != params.get("profiles"):
        reasons.append("other shape profiles")
    if not reasons:
        reasons.append("the file changed since it was built (sha256 differs from its manifest)")
    return "was built from other inputs: " + "; ".join(reasons)


def _cc_major(cc: str) -> int:
    return int(cc.split(".")[0])


def _version_can_load(manifest: dict, runtime_version: str) -> bool:
    built = manifest["backend_version"]
    if built == runtime_version:
        return True
    if manifest.get("params", {}).get("version_compatible"):
        # Version-compatible engines load on the same or a later release of the same major version.
        b, r = (tuple(int(x) for x in re.findall(r"\d+", v)[:3]) for v in (built, runtime_version))
        return b[0] == r[0] and r >= b
    return False


def _hardware_compatible(manifest: dict, built_on: str, device: str) -> bool:
    level = manifest.get("params", {}).get("hardware_compatibility_level")
    if level == "ampere+":
        return _cc_major(device) >= 8
    return device == built_on


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
    }


def _announce_backend(be: backendmod.Backend, requested: str) -> None:
    if requested == "auto":
        why = "standard TensorRT is installed" if be.name == backendmod.TENSORRT else "standard TensorRT is not installed"
        _say(f"Backend: {be.display} (auto: {why})")


def _read_timing_cache(path: Path) -> bytes:
    check_output(path, force=True)
    return path.read_bytes() if path.is_file() else b""


def _show_step(status: Any, be: backendmod.Backend, phase: str, step: int) -> None:
    """Called by the builder after each step; Ctrl-C here cancels the build."""
    status.update(f"{be.display}: {phase} ({step + 1})")


def _say(message: str) -> None:
    """One message on stderr, on one line however narrow the terminal."""
    console.print(message, soft_wrap=True, markup=False)


class _PeakRSS:
    """Peak resident memory of this process while the block runs, sampled by a thread.

    ``resource.getrusage`` reports the peak since the process started (training, export...),
    not the build's own peak; sampling RSS does.
    """

    def __enter__(self) -> "_PeakRSS":
        import psutil

        self._process = psutil.Process()
        self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_SECONDS):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)
