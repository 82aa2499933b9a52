"""The backend seam: the one module that imports ``tensorrt`` or ``tensorrt_rtx``.

Standard TensorRT (Jetson's JetPack and data-centre GPUs, 8.5 to 11.x) and TensorRT-RTX (RTX GPUs;
from PyPI everywhere, building ahead of time on the CPU for a list of target compute capabilities)
have nearly the same Python API. What differs is handled here, by feature detection (``hasattr``)
rather than version strings, so the rest of edgepipe speaks to one ``Backend``. Before an engine is
deserialized, ``check_engine_runtime`` says whether it was built for this TensorRT, version and GPU:
a mismatch is one clear error naming both sides and the rebuild command, not a crash inside TensorRT.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.digest import sha256_file
from pipeline.errors import EdgepipeError
from pipeline.tensorrt.messages import build_fix, make_logger, parse_error, progress_monitor, sigint_cancels
from pipeline.tensorrt.options import (
    HARDWARE_COMPATIBILITY,
    MEMORY_POOLS,
    BuildSettings,
    cc_key,
    normalize_compute_capability,
)

TENSORRT, TENSORRT_RTX = "tensorrt", "tensorrt-rtx"
BACKENDS = (TENSORRT, TENSORRT_RTX)
_MODULES = {TENSORRT: "tensorrt", TENSORRT_RTX: "tensorrt_rtx"}
DISPLAY_NAMES = {TENSORRT: "TensorRT", TENSORRT_RTX: "TensorRT-RTX"}

INSTALL_FIX = (
    "on Jetson install JetPack's TensorRT Python bindings (sudo apt install python3-libnvinfer); "
    "on x86 run 'pip install tensorrt' (data-centre GPUs) or \"pip install 'edgepipe[rtx]'\" (TensorRT-RTX for RTX GPUs)"
)


@dataclass
class Backend:
    """One installed TensorRT flavour: its module, version and a logger that keeps messages."""

    name: str
    version: str
    trt: Any = field(repr=False)
    logger: Any = field(repr=False)
    # Runtimes stay alive as long as the engines they deserialized.
    _runtimes: list = field(default_factory=list, repr=False)

    @property
    def display(self) -> str:
        return f"{DISPLAY_NAMES[self.name]} {self.version}"

    @property
    def has_legacy_precision(self) -> bool:
        """True where the builder still has FP16/INT8 flags and implicit INT8 calibrators (<= 10.x)."""
        return hasattr(self.trt.BuilderFlag, "INT8") and hasattr(self.trt, "IInt8EntropyCalibrator2")

    @property
    def has_compute_capability_targets(self) -> bool:
        """True where the builder takes a list of target GPUs (TensorRT-RTX ahead-of-time builds)."""
        return hasattr(self.trt, "ComputeCapability") and hasattr(self.trt.IBuilderConfig, "set_compute_capability")

    def compute_capability_targets(self) -> list[str]:
        """Every concrete target GPU this backend can build for, as "X.Y" strings."""
        if not self.has_compute_capability_targets:
            return []
        names = [n for n in dir(self.trt.ComputeCapability) if n.startswith("SM") and n[2:].isdigit()]
        return sorted((normalize_compute_capability(n) for n in names), key=cc_key)

    def parse_onnx(self, path: str, strongly_typed: bool = True) -> tuple[Any, Any, Any]:
        """(builder, network, parser) for the ONNX file; one clear error naming the failing node."""
        trt = self.trt
        self.logger.clear()
        builder = trt.Builder(self.logger)
        network = builder.create_network(self._network_flags(strongly_typed))
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(path)):
            errors = [parser.get_error(i) for i in range(parser.num_errors)]
            raise parse_error(self, path, errors, self.logger.errors())
        return builder, network, parser

    def _network_flags(self, strongly_typed: bool) -> int:
        trt, flags, creation = self.trt, 0, self.trt.NetworkDefinitionCreationFlag
        if self.name == TENSORRT_RTX:
            return 0  # TensorRT-RTX networks are always strongly typed
        if hasattr(creation, "EXPLICIT_BATCH"):  # required on 8.x, ignored (deprecated) on 10.x
            flags |= 1 << int(creation.EXPLICIT_BATCH)
        if strongly_typed and hasattr(creation, "STRONGLY_TYPED"):
            flags |= 1 << int(creation.STRONGLY_TYPED)
        elif strongly_typed and hasattr(trt.BuilderFlag, "FP16"):  # TensorRT 11 has neither: all strongly typed
            raise EdgepipeError(
                f"{self.display} cannot build strongly typed networks (it predates TensorRT 9.2)",
                fix="pass --legacy-precision to use the builder's --fp16/--int8 flags, or upgrade TensorRT to 10.x",
            )
        return flags

    def builder_config(
        self,
        builder: Any,
        network: Any,
        settings: BuildSettings,
        profiles: dict,
        timing_cache: bytes | None = None,
        calibration: tuple[Any, dict[str, tuple[int, ...]]] | None = None,
    ) -> Any:
        """A builder config with one optimization profile (``{input: (min, opt, max)}``), the precision and
        build controls of the plan's resolved ``settings``, a timing cache and the legacy INT8 calibrator."""
        trt = self.trt
        config = builder.create_builder_config()
        for shapes in [profiles] if profiles else []:
            config.add_optimization_profile(self._profile(builder, shapes))
        if settings.legacy_precision and settings.precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16 if settings.precision == "fp16" else trt.BuilderFlag.INT8)
        if calibration is not None:
            config.int8_calibrator, shapes = calibration
            if shapes:
                config.set_calibration_profile(self._profile(builder, {n: (s, s, s) for n, s in shapes.items()}))
        self.check_settings(settings)
        for pool, size in settings.memory_pools.items():
            config.set_memory_pool_limit(getattr(trt.MemoryPoolType, MEMORY_POOLS[pool]), size)
        if settings.optimization_level is not None:
            config.builder_optimization_level = settings.optimization_level
        if settings.dla_core is not None:
            config.default_device_type = trt.DeviceType.DLA
            config.DLA_core = settings.dla_core
            if settings.gpu_fallback:
                config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        if settings.hardware_compatibility:
            config.hardware_compatibility_level = getattr(
                trt.HardwareCompatibilityLevel, HARDWARE_COMPATIBILITY[settings.hardware_compatibility]
            )
        if settings.version_compatible:
            config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        if settings.compute_capability:
            config.num_compute_capabilities = len(settings.compute_capability)
            for i, cc in enumerate(settings.compute_capability):
                member = "CURRENT" if cc == "current" else "SM" + cc.replace(".", "")
                config.set_compute_capability(getattr(trt.ComputeCapability, member), i)
        if timing_cache is not None:
            config.set_timing_cache(config.create_timing_cache(timing_cache), ignore_mismatch=True)
        return config

    @staticmethod
    def _profile(builder: Any, shapes: dict[str, tuple]) -> Any:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        return profile

    def check_settings(self, settings: BuildSettings) -> None:
        """A clear error naming the backend for each option it lacks (before any work is done)."""
        trt = self.trt
        if settings.legacy_precision and not self.has_legacy_precision:
            raise EdgepipeError(
                f"--legacy-precision is not available with {self.display}: it has no FP16/INT8 builder flags or INT8 calibrators",
                fix="drop --legacy-precision: --fp16/--int8 put the precision in the ONNX graph by default, which this backend builds",
            )
        for pool in settings.memory_pools:
            self._require(hasattr(trt.MemoryPoolType, MEMORY_POOLS[pool]), f"--memPoolSize {pool}")
        if settings.optimization_level is not None:
            self._require(hasattr(trt.IBuilderConfig, "builder_optimization_level"), "--builderOptimizationLevel")
        if settings.dla_core is not None:
            self._require(
                self.name == TENSORRT and hasattr(trt, "DeviceType"),
                "--useDLACore",
                "DLA cores exist only on Jetson, with standard TensorRT",
            )
        if settings.gpu_fallback and settings.dla_core is None:
            raise EdgepipeError(
                "--allowGPUFallback only applies with --useDLACore",
                fix="add --useDLACore N, or drop --allowGPUFallback",
            )
        if settings.hardware_compatibility:
            self._require(hasattr(trt, "HardwareCompatibilityLevel"), "--hardwareCompatibilityLevel")
        if settings.version_compatible:
            # TensorRT-RTX has the flag, but such builds need a lean runtime library it does not ship.
            self._require(
                self.name == TENSORRT and hasattr(trt.BuilderFlag, "VERSION_COMPATIBLE"), "--versionCompatible"
            )
        if settings.compute_capability:
            self._require(
                self.has_compute_capability_targets,
                "--computeCapability",
                "standard TensorRT builds for the GPU it runs on; use --hardwareCompatibilityLevel ampere+ for portable engines",
            )

    def _require(self, available: bool, option: str, why: str | None = None) -> None:
        if not available:
            other = DISPLAY_NAMES[TENSORRT_RTX if self.name == TENSORRT else TENSORRT]
            raise EdgepipeError(
                f"{option} is not available with {self.display}" + (f" ({why})" if why else ""),
                fix=f"drop {option.split()[0]}, or build with --backend {TENSORRT_RTX if self.name == TENSORRT else TENSORRT} ({other}) where it is installed",
            )

    def build(
        self, builder: Any, network: Any, config: Any, on_step: Callable[[str, int], None] | None = None
    ) -> bytes:
        """Serialize an engine. Ctrl-C (or an exception from ``on_step``) cancels the build cleanly, and is
        raised again here once the builder has returned (``monitor`` tells why)."""
        monitor = progress_monitor(self.trt, on_step)
        if monitor is not None:
            config.progress_monitor = monitor
        self.logger.clear()
        with sigint_cancels(monitor):
            engine = builder.build_serialized_network(network, config)
        if monitor is not None and monitor.exception is not None:
            raise monitor.exception
        if engine is None:
            reason = self.logger.last_error() or "no reason given"
            raise EdgepipeError(f"{self.display} could not build the engine: {reason}", fix=build_fix(reason))
        return bytes(engine)

    def deserialize(self, engine_bytes: bytes) -> Any:
        """An ICudaEngine from serialized bytes; a clear error instead of a crash on failure."""
        self.logger.clear()
        try:
            runtime = self.trt.Runtime(self.logger)
            engine = runtime.deserialize_cuda_engine(engine_bytes)
        except Exception as exc:  # bindings raise TypeError/RuntimeError for unusable input
            engine, reason = None, f"{type(exc).__name__}: {exc}"
        else:
            reason = self.logger.last_error()
        if engine is None:
            raise EdgepipeError(
                f"{self.display} could not load the engine: {reason or 'no reason given'}",
                fix="run it on a machine with an NVIDIA GPU and driver, with the TensorRT it was built with; "
                "or rebuild it here with 'build-engine MODEL.onnx --force'",
            )
        self._runtimes.append(runtime)
        return engine


def installed_backends() -> list[str]:
    """The TensorRT flavours whose Python package is installed, standard TensorRT first."""
    return [name for name in BACKENDS if importlib.util.find_spec(_MODULES[name]) is not None]


_loaded: dict[str, Backend] = {}


def get_backend(which: str = "auto") -> Backend:
    """The backend to build or run with: "auto" prefers standard TensorRT, then TensorRT-RTX."""
    if which not in ("auto", *BACKENDS):
        raise EdgepipeError(f"unknown backend {which!r}", fix=f"pass --backend auto, {TENSORRT} or {TENSORRT_RTX}")
    candidates = BACKENDS if which == "auto" else (which,)
    failures = []
    for name in candidates:
        if name in _loaded:
            return _loaded[name]
        try:
            module = importlib.import_module(_MODULES[name])
        except Exception as exc:  # ImportError, or OSError when the shared libraries are missing
            reason = str(exc).splitlines()[0] if str(exc) else "not importable"
            failures.append(f"{DISPLAY_NAMES[name]}: {type(exc).__name__}: {reason}")
            continue
        _loaded[name] = Backend(name, module.__version__, module, make_logger(module, DISPLAY_NAMES[name]))
        return _loaded[name]
    what = "no TensorRT is installed" if which == "auto" else f"{DISPLAY_NAMES[which]} is not installed"
    raise EdgepipeError(f"{what} ({'; '.join(failures)})", fix=INSTALL_FIX)


def check_engine_runtime(
    engine_path: str | Path, backend: Any, device_compute_capability: str | None
) -> dict[str, Any]:
    """The engine's manifest, after checking it was built for ``backend`` (a ``Backend`` or a name), its
    version and the GPU of compute capability ``device_compute_capability`` ("X.Y"; None skips that check)."""
    from pipeline.artifacts import Kind, read_manifest  # imports onnx: not when `build-engine --help` loads this module

    engine = Path(engine_path)
    if not engine.is_file():
        raise EdgepipeError(f"engine {engine} does not exist", fix="build it with 'build-engine MODEL.onnx'")
    be = backend if isinstance(backend, Backend) else get_backend(backend)
    manifest = read_manifest(engine)
    rebuild = f"rebuild it here with 'build-engine {manifest.get('onnx', 'MODEL.onnx') if manifest else 'MODEL.onnx'} --saveEngine {engine} --force'"
    if manifest is None or manifest.get("kind") != Kind.ENGINE:
        raise EdgepipeError(
            f"{engine} has no edgepipe engine manifest, so it cannot be checked against this runtime", fix=rebuild
        )
    if manifest.get("bytes") != engine.stat().st_size or manifest.get("sha256") != sha256_file(engine):
        raise EdgepipeError(
            f"{engine} does not match its manifest (truncated or replaced since it was built)", fix=rebuild
        )
    built = f"{DISPLAY_NAMES.get(manifest['backend'], manifest['backend'])} {manifest['backend_version']}"
    if manifest["backend"] != be.name:
        raise EdgepipeError(
            f"{engine} was built with {built}, but this runtime is {be.display}",
            fix=f"load it with --backend {manifest['backend']}, or {rebuild}",
        )
    if not _version_can_load(manifest, be.version):
        raise EdgepipeError(
            f"{engine} was built with {built}, but this runtime is {be.display}; engines load only with the version that built them",
            fix=rebuild,
        )
    if device_compute_capability:
        device = normalize_compute_capability(device_compute_capability)
        targets = manifest.get("target_compute_capabilities") or []
        if manifest["backend"] == TENSORRT_RTX and targets and device not in targets:
            raise EdgepipeError(
                f"{engine} targets compute capability {', '.join(targets)}, but this GPU is {device}",
                fix=f"{rebuild} (or add --computeCapability {device} when building ahead of time)",
            )
        built_on = manifest.get("gpu_compute_capability")
        ampere_plus = manifest.get("params", {}).get("hardware_compatibility_level") == "ampere+"
        runs_here = cc_key(device)[0] >= 8 if ampere_plus else device == built_on
        if manifest["backend"] == TENSORRT and built_on and not runs_here:
            raise EdgepipeError(
                f"{engine} was built on a GPU of compute capability {built_on}, but this GPU is {device}",
                fix=f"{rebuild} (or build with --hardwareCompatibilityLevel ampere+ for Ampere and newer GPUs)",
            )
    return manifest


def _version_can_load(manifest: dict, runtime_version: str) -> bool:
    built = manifest["backend_version"]
    if built == runtime_version or not manifest.get("params", {}).get("version_compatible"):
        return built == runtime_version
    # Version-compatible engines load on the same or a later release of the same major version.
    b, r = (tuple(int(x) for x in re.findall(r"\d+", v)[:3]) for v in (built, runtime_version))
    return b[0] == r[0] and r >= b
