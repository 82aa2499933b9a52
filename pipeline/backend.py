"""The backend seam: the one module that imports ``tensorrt`` or ``tensorrt_rtx``.

edgepipe builds and loads engines with either flavour of TensorRT:

- standard TensorRT (``tensorrt``): Jetson (JetPack) and data-centre GPUs; versions 8.5 to 11.x.
- TensorRT-RTX (``tensorrt_rtx``): RTX GPUs; installs from PyPI everywhere and builds engines
  ahead of time on the CPU for a list of target compute capabilities.

Their Python APIs are nearly the same. What differs is handled here, by feature detection
(``hasattr``) rather than version strings, so the rest of edgepipe speaks to one ``Backend``.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import importlib.util
import re
import signal
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from pipeline.errors import EdgepipeError

TENSORRT, TENSORRT_RTX = "tensorrt", "tensorrt-rtx"
BACKENDS = (TENSORRT, TENSORRT_RTX)
_MODULES = {TENSORRT: "tensorrt", TENSORRT_RTX: "tensorrt_rtx"}
DISPLAY_NAMES = {TENSORRT: "TensorRT", TENSORRT_RTX: "TensorRT-RTX"}

INSTALL_FIX = (
    "on Jetson install JetPack's TensorRT Python bindings (sudo apt install python3-libnvinfer); "
    "on x86 run 'pip install tensorrt' (data-centre GPUs) or \"pip install 'edgepipe[rtx]'\" (TensorRT-RTX for RTX GPUs)"
)

# trtexec's names for --hardwareCompatibilityLevel, and the enum member each one means.
HARDWARE_COMPATIBILITY = {"none": "NONE", "ampere+": "AMPERE_PLUS", "sameComputeCapability": "SAME_COMPUTE_CAPABILITY"}
# trtexec's names for --memPoolSize pools.
MEMORY_POOLS = {
    "workspace": "WORKSPACE",
    "dlaSRAM": "DLA_MANAGED_SRAM",
    "dlaLocalDRAM": "DLA_LOCAL_DRAM",
    "dlaGlobalDRAM": "DLA_GLOBAL_DRAM",
    "tacticSharedMem": "TACTIC_SHARED_MEMORY",
}


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
        return sorted((_sm_to_text(n) for n in names), key=_cc_key)

    # --- building ---------------------------------------------------------------------------

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
        trt, flags = self.trt, 0
        creation = trt.NetworkDefinitionCreationFlag
        if self.name == TENSORRT_RTX:
            return 0  # TensorRT-RTX networks are always strongly typed
        if hasattr(creation, "EXPLICIT_BATCH"):  # required on 8.x, ignored (deprecated) on 10.x
            flags |= 1 << int(creation.EXPLICIT_BATCH)
        if strongly_typed and hasattr(creation, "STRONGLY_TYPED"):
            flags |= 1 << int(creation.STRONGLY_TYPED)
        elif strongly_typed and not hasattr(trt.BuilderFlag, "FP16"):
            pass  # TensorRT 11 removed the flag: every network is strongly typed
        elif strongly_typed:
            raise EdgepipeError(
                f"{self.display} cannot build strongly typed networks (it predates TensorRT 9.2)",
                fix="pass --legacy-precision to use the builder's --fp16/--int8 flags, or upgrade TensorRT to 10.x",
            )
        return flags

    @staticmethod
    def network_inputs(network: Any) -> list[tuple[str, tuple[int, ...]]]:
        """Name and shape (-1 for a dynamic dimension) of each network input."""
        return [(t.name, tuple(t.shape)) for t in (network.get_input(i) for i in range(network.num_inputs))]

    def builder_config(self, builder: Any, network: Any, settings: "BuildSettings") -> Any:
        """A builder config with the profiles, precision and build controls of ``settings``.

        An option the backend lacks is a clear error naming the backend.
        """
        trt = self.trt
        config = builder.create_builder_config()
        for shapes in settings.profiles:
            profile = builder.create_optimization_profile()
            for name, (lo, opt, hi) in shapes.items():
                profile.set_shape(name, lo, opt, hi)
            config.add_optimization_profile(profile)

        if settings.legacy_precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16 if settings.legacy_precision == "fp16" else trt.BuilderFlag.INT8)
        if settings.calibrator is not None:
            config.int8_calibrator = settings.calibrator
            if settings.calibration_shapes:
                profile = builder.create_optimization_profile()
                for name, shape in settings.calibration_shapes.items():
                    profile.set_shape(name, shape, shape, shape)
                config.set_calibration_profile(profile)

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
            config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, HARDWARE_COMPATIBILITY[settings.hardware_compatibility])
        if settings.version_compatible:
            config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        if settings.compute_capabilities:
            config.num_compute_capabilities = len(settings.compute_capabilities)
            for i, cc in enumerate(settings.compute_capabilities):
                member = "CURRENT" if cc == "current" else _text_to_sm(cc)
                config.set_compute_capability(getattr(trt.ComputeCapability, member), i)
        if settings.timing_cache is not None:
            cache = config.create_timing_cache(settings.timing_cache)
            config.set_timing_cache(cache, ignore_mismatch=True)
        return config

    def check_settings(self, settings: "BuildSettings") -> None:
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
            self._require(self.name == TENSORRT and hasattr(trt, "DeviceType"), "--useDLACore", "DLA cores exist only on Jetson, with standard TensorRT")
        if settings.gpu_fallback and settings.dla_core is None:
            raise EdgepipeError("--allowGPUFallback only applies with --useDLACore", fix="add --useDLACore N, or drop --allowGPUFallback")
        if settings.hardware_compatibility:
            self._require(hasattr(trt, "HardwareCompatibilityLevel"), "--hardwareCompatibilityLevel")
        if settings.version_compatible:
            # TensorRT-RTX has the flag, but such builds need a lean runtime library it does not ship.
            self._require(self.name == TENSORRT and hasattr(trt.BuilderFlag, "VERSION_COMPATIBLE"), "--versionCompatible")
        if settings.compute_capabilities:
            self._require(
                self.has_compute_capability_targets, "--computeCapability",
                "standard TensorRT builds for the GPU it runs on; use --hardwareCompatibilityLevel ampere+ for portable engines",
            )

    def _require(self, available: bool, option: str, why: str | None = None) -> None:
        if not available:
            other = DISPLAY_NAMES[TENSORRT_RTX if self.name == TENSORRT else TENSORRT]
            raise EdgepipeError(
                f"{option} is not available with {self.display}" + (f" ({why})" if why else ""),
                fix=f"drop {option.split()[0]}, or build with --backend {TENSORRT_RTX if self.name == TENSORRT else TENSORRT} ({other}) where it is installed",
            )

    def build(self, builder: Any, network: Any, config: Any, on_step: Callable[[str, int], None] | None = None) -> bytes:
        """Serialize an engine. Ctrl-C (or an exception from ``on_step``) cancels the build cleanly.

        The builder calls back into Python only through the progress monitor, and it swallows
        exceptions raised there; so the monitor records them, cancels the build, and they are
        raised again here once the builder has returned.
        """
        monitor = _progress_monitor(self.trt, on_step)
        if monitor is not None:
            config.progress_monitor = monitor
        self.logger.clear()
        with _sigint_cancels(monitor):
            engine = builder.build_serialized_network(network, config)
        if monitor is not None and monitor.exception is not None:
            raise monitor.exception
        if engine is None:
            reason = self.logger.last_error() or "no reason given"
            raise EdgepipeError(f"{self.display} could not build the engine: {reason}", fix=_build_fix(reason))
        return bytes(engine)

    def timing_cache_bytes(self, config: Any) -> bytes | None:
        cache = config.get_timing_cache()
        return None if cache is None else bytes(cache.serialize())

    # --- loading ----------------------------------------------------------------------------

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


@dataclass
class BuildSettings:
    """Everything that goes into a builder config, already checked and in backend-neutral form."""

    profiles: list[dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]] = field(default_factory=list)
    legacy_precision: str | None = None  # "fp16" | "int8" with builder flags (TensorRT <= 10)
    calibrator: Any = None
    calibration_shapes: dict[str, tuple[int, ...]] | None = None
    memory_pools: dict[str, int] = field(default_factory=dict)
    optimization_level: int | None = None
    dla_core: int | None = None
    gpu_fallback: bool = False
    hardware_compatibility: str | None = None
    version_compatible: bool = False
    compute_capabilities: list[str] = field(default_factory=list)
    timing_cache: bytes | None = None


# --- finding a backend ----------------------------------------------------------------------------


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
            failures.append(f"{DISPLAY_NAMES[name]}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'not importable'}")
            continue
        _loaded[name] = Backend(name=name, version=module.__version__, trt=module, logger=_make_logger(module, DISPLAY_NAMES[name]))
        return _loaded[name]
    what = "no TensorRT is installed" if which == "auto" else f"{DISPLAY_NAMES[which]} is not installed"
    raise EdgepipeError(f"{what} ({'; '.join(failures)})", fix=INSTALL_FIX)


def current_compute_capability() -> str | None:
    """Compute capability ("X.Y") of GPU 0 through the CUDA driver, or None without a GPU.

    It asks libcuda directly (a few microseconds) rather than importing torch (a second or more).
    """
    for library in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            cuda = ctypes.CDLL(library)
            break
        except OSError:
            continue
    else:
        return None
    count, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return None
    # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75, _MINOR = 76
    if cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, 0) != 0 or cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, 0) != 0:
        return None
    return f"{major.value}.{minor.value}"


def normalize_compute_capability(text: str) -> str:
    """ "8.9", "sm89", "SM_89", "89" -> "8.9"; "current" stays. An unreadable value is an error."""
    value = text.strip().lower().replace("_", "")
    if value == "current":
        return value
    value = value[2:] if value.startswith("sm") else value
    if "." in value:
        major, _, minor = value.partition(".")
    else:
        major, minor = value[:-1], value[-1:]
    if not (major.isdigit() and minor.isdigit()):
        raise EdgepipeError(f"--computeCapability {text!r} is not a compute capability", fix="pass it as X.Y, e.g. --computeCapability 8.9, or 'current'")
    return f"{int(major)}.{int(minor)}"


def _sm_to_text(member: str) -> str:
    digits = member[2:]
    return f"{int(digits[:-1])}.{digits[-1]}"


def _text_to_sm(cc: str) -> str:
    major, minor = cc.split(".")
    return f"SM{major}{minor}"


def _cc_key(cc: str) -> tuple[int, int]:
    major, minor = cc.split(".")
    return int(major), int(minor)


# --- parser errors ------------------------------------------------------------------------------


def parse_error(backend: Backend, path: Any, errors: list, log_errors: list[str]) -> EdgepipeError:
    """One clear error for the first parser failure: node, op, the parser's reason, a fix."""
    if not errors:
        reason = log_errors[-1] if log_errors else "no reason given"
        return EdgepipeError(f"{backend.display} cannot parse {path}: {reason}", fix="check the model with 'edgepipe check' or re-export it")
    first = errors[0]
    node_name = _safe(lambda: first.node_name()) or "?"
    op = _safe(lambda: first.node_operator()) or "?"
    reason = (_safe(lambda: first.desc()) or str(first)).strip().splitlines()[0]
    detail = _first_real_error(log_errors)
    if detail and detail not in reason:
        reason = f"{reason}: {detail}"
    more = f" (+{len(errors) - 1} more error{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return EdgepipeError(
        f"{backend.display} cannot parse {path}: node '{node_name}' ({op}): {reason}{more}",
        fix=_parser_fix(op, reason),
    )


def _first_real_error(log_errors: list[str]) -> str | None:
    """The builder's own reason, without the parser's node banners and CPU-only CUDA noise."""
    for message in log_errors:
        line = message.strip().splitlines()[0] if message.strip() else ""
        if line and "ModelImporter" not in line and "cudaError" not in line and "catchCudaError" not in line:
            return re.sub(r" In \w+ at /\S+\)$", ")", line)
    return None


def _parser_fix(op: str, reason: str) -> str:
    text = reason.lower()
    if op == "DequantizeLinear" and ("int32" in text or "bias" in text):
        return "TensorRT takes no quantized bias: quantize with 'edgepipe precision --int8' (bias stays float) instead of a tool that makes INT32 bias DequantizeLinear nodes"
    if op in ("QuantizeLinear", "DequantizeLinear") and ("zero" in text or "zero_point" in text or "asymmetric" in text):
        return "TensorRT takes only symmetric quantization (zero point 0): quantize with 'edgepipe precision --int8'"
    if "opset" in text or "version" in text:
        return "re-export with a newer opset ('edgepipe export --opset 17'); TensorRT needs opset >= 13 for Q/DQ"
    if "no importer registered" in text or "plugin" in text:
        return f"TensorRT has no {op} op: re-export the model so it uses standard ONNX ops (or register a plugin for {op})"
    return "re-export the model with 'edgepipe export' (opset 17), or replace the node's op with one TensorRT supports"


def _build_fix(reason: str) -> str:
    text = reason.lower()
    if "turing" in text or "sm75" in text:
        return "Turing (compute capability 7.5) has no FP32 matrix multiply in TensorRT-RTX: build with --fp16 or --int8, or drop 7.5 from --computeCapability"
    if "workspace" in text:
        return "raise the workspace limit, e.g. --memPoolSize workspace:1024 (MiB), or drop --memPoolSize"
    return "run again with --verbose for the builder's log"


def _safe(getter: Callable[[], Any]) -> Any:
    try:
        return getter()
    except Exception:
        return None


# --- logger, progress monitor and Ctrl-C ----------------------------------------------------


def _make_logger(trt: Any, label: str) -> Any:
    class EdgepipeLogger(trt.ILogger):
        """Keeps the builder's messages; prints them to stderr only with ``verbose``."""

        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[tuple[Any, str]] = []
            self.verbose = False

        def log(self, severity, msg):
            self.messages.append((severity, msg))
            if self.verbose and severity <= trt.ILogger.INFO:
                print(f"[{label}] {msg}", file=sys.stderr)

        def clear(self):
            self.messages = []

        def errors(self) -> list[str]:
            return [m for s, m in self.messages if s <= trt.ILogger.ERROR]

        def last_error(self) -> str | None:
            errors = self.errors()
            return errors[-1].strip() if errors else None

    return EdgepipeLogger()


def _progress_monitor(trt: Any, on_step: Callable[[str, int], None] | None) -> Any:
    if not hasattr(trt, "IProgressMonitor"):
        return None  # TensorRT 8.x: no monitor, so Ctrl-C waits for the build to end

    class CancellableMonitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.exception: BaseException | None = None

        def phase_start(self, phase_name, parent_phase, num_steps):
            pass

        def phase_finish(self, phase_name):
            pass

        def step_complete(self, phase_name, step):
            try:
                if self.exception is None and on_step is not None:
                    on_step(phase_name, step)
            except BaseException as exc:  # noqa: BLE001 - re-raised after the builder returns
                self.exception = exc
            return self.exception is None  # False cancels the build

    return CancellableMonitor()


@contextlib.contextmanager
def _sigint_cancels(monitor: Any) -> Iterator[None]:
    """While building, Ctrl-C asks the progress monitor to cancel instead of being lost in C++."""
    if monitor is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def cancel(signum, frame):
        monitor.exception = monitor.exception or KeyboardInterrupt()

    previous = signal.signal(signal.SIGINT, cancel)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
