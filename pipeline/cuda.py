"""The one door to the GPU's driver: pycuda (buffers, streams, events) and libcuda (CUDA graphs, device facts).

Nothing else in edgepipe imports pycuda or opens libcuda. pycuda ships no wheels (it builds from
source against the CUDA toolkit), so it is imported only when a GPU path runs, with one clear error
saying how to install it. ``current_compute_capability`` asks libcuda directly (microseconds)
rather than importing torch (a second or more).

CUDA graphs: pycuda (up to 2026.1) has no stream-capture API, so the engine's enqueue is captured
with the CUDA driver's own functions (cuStreamBeginCapture_v2, cuStreamEndCapture,
cuGraphInstantiateWithFlags, cuGraphLaunch) through ctypes on the same libcuda pycuda uses, on
pycuda's stream. Like trtexec, only the enqueue is captured; the copies stay outside and timed.
"""

from __future__ import annotations

import ctypes
from typing import Any

from pipeline.errors import EdgepipeError

PYCUDA_FIX = (
    "pip install 'edgepipe[gpu]' on the GPU host (pycuda builds from source: it needs the CUDA toolkit, "
    "with nvcc on PATH and CUDA_ROOT set; on Jetson the toolkit comes with JetPack)"
)


def import_pycuda() -> Any:
    """``pycuda.driver``, or one clear error saying how to install it."""
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise pycuda_missing(exc) from None
    return cuda


def pycuda_missing(exc: BaseException) -> EdgepipeError:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return EdgepipeError(f"running TensorRT engines needs pycuda, which cannot be imported ({detail})", fix=PYCUDA_FIX)


def autoinit() -> Any:
    """``pycuda.driver`` with a CUDA context made current (for the legacy INT8 calibrator)."""
    try:
        import pycuda.autoinit  # noqa: F401 - creates the CUDA context the calibrator copies into
        import pycuda.driver as cuda
    except Exception as exc:  # ImportError without pycuda; RuntimeError/cuda errors without a GPU
        raise EdgepipeError(
            f"legacy INT8 calibration needs pycuda and a GPU ({type(exc).__name__}: {exc})",
            fix="pip install 'edgepipe[gpu]' on the GPU machine, or drop --legacy-precision (explicit INT8 calibrates on the CPU)",
        )
    return cuda


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
    if (
        cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, 0) != 0
        or cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, 0) != 0
    ):
        return None
    return f"{major.value}.{minor.value}"


# --- CUDA graphs through the driver API ---------------------------------------------------------

_CAPTURE_MODE_THREAD_LOCAL = 1  # CU_STREAM_CAPTURE_MODE_THREAD_LOCAL, as trtexec captures


class Driver:
    """The few libcuda functions CUDA graph capture needs (pycuda does not wrap them)."""

    def __init__(self):
        try:
            self.lib = ctypes.CDLL("libcuda.so.1")
        except OSError as exc:
            raise EdgepipeError(
                f"--cuda-graph needs the CUDA driver library libcuda.so.1 ({exc})",
                fix="install the NVIDIA driver, or run without --cuda-graph",
            )
        for name in (
            "cuStreamBeginCapture_v2",
            "cuStreamEndCapture",
            "cuGraphInstantiateWithFlags",
            "cuGraphLaunch",
            "cuGraphExecDestroy",
            "cuGraphDestroy",
        ):
            if not hasattr(self.lib, name):
                raise EdgepipeError(
                    f"--cuda-graph needs {name} from the CUDA driver (CUDA 11.4 or newer)",
                    fix="update the NVIDIA driver, or run without --cuda-graph",
                )
        v = ctypes.c_void_p
        self.lib.cuStreamBeginCapture_v2.argtypes = [v, ctypes.c_int]
        self.lib.cuStreamEndCapture.argtypes = [v, ctypes.POINTER(v)]
        self.lib.cuGraphInstantiateWithFlags.argtypes = [ctypes.POINTER(v), v, ctypes.c_ulonglong]
        self.lib.cuGraphLaunch.argtypes = [v, v]
        self.lib.cuGraphExecDestroy.argtypes = [v]
        self.lib.cuGraphDestroy.argtypes = [v]

    def check(self, result: int, what: str, label: str) -> None:
        if result != 0:
            text = ctypes.c_char_p()
            self.lib.cuGetErrorString(result, ctypes.byref(text))
            reason = text.value.decode() if text.value else f"CUDA error {result}"
            raise EdgepipeError(f"{label}: {what} failed ({reason})", fix="run without --cuda-graph")


class CudaGraph:
    def __init__(self, driver: Driver, graph: ctypes.c_void_p, executable: ctypes.c_void_p, label: str):
        self.driver, self.graph, self.executable, self.label = driver, graph, executable, label

    @classmethod
    def capture(cls, driver: Driver, stream: int, enqueue, label: str) -> CudaGraph:
        lib = driver.lib
        driver.check(
            lib.cuStreamBeginCapture_v2(ctypes.c_void_p(stream), _CAPTURE_MODE_THREAD_LOCAL),
            "starting CUDA graph capture",
            label,
        )
        graph = ctypes.c_void_p()
        try:
            enqueue()
        finally:
            # Always end the capture, so a failed enqueue leaves the stream usable.
            ended = lib.cuStreamEndCapture(ctypes.c_void_p(stream), ctypes.byref(graph))
        driver.check(ended, "capturing the engine in a CUDA graph (the engine may not be capturable)", label)
        executable = ctypes.c_void_p()
        driver.check(
            lib.cuGraphInstantiateWithFlags(ctypes.byref(executable), graph, 0), "instantiating the CUDA graph", label
        )
        return cls(driver, graph, executable, label)

    def launch(self, stream: int) -> None:
        self.driver.check(
            self.driver.lib.cuGraphLaunch(self.executable, ctypes.c_void_p(stream)),
            "launching the CUDA graph",
            self.label,
        )

    def destroy(self) -> None:
        if self.executable:
            self.driver.lib.cuGraphExecDestroy(self.executable)
            self.executable = None
        if self.graph:
            self.driver.lib.cuGraphDestroy(self.graph)
            self.graph = None
