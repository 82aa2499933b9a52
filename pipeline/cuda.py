"""The one door to the GPU: pycuda or cuda-python (buffers, streams, events) and libcuda (CUDA graphs, device facts).

Engines run through pycuda when it is installed (it builds from source against the CUDA toolkit),
else through NVIDIA's cuda-python (wheels for x86 and aarch64) behind the few pycuda calls the engine
runner makes; either is imported only when a GPU path runs. pycuda has no stream-capture API, so CUDA
graphs capture the engine's enqueue (only, like trtexec) with the driver's own functions, by ctypes.
"""

from __future__ import annotations

import ctypes
from typing import Any

from pipeline.errors import EdgepipeError

CUDA_FIX = (
    "pip install 'edgepipe[cuda12]' on the GPU host (cuda-python for CUDA 12 drivers, JetPack 6), or "
    "'edgepipe[cuda13]' (CUDA 13 drivers, JetPack 7); or pycuda, 'edgepipe[gpu]', which builds against the CUDA toolkit"
)


def binding() -> str | None:
    """Which CUDA binding engines run through here: "pycuda", "cuda-python", or None when neither imports."""
    try:
        import pycuda.driver  # noqa: F401 - only asked whether it imports
    except ImportError:
        return "cuda-python" if _cuda_python_runtime() is not None else None
    return "pycuda"


def import_cuda() -> Any:
    """``pycuda.driver`` when pycuda is installed, else cuda-python behind the same calls; or one clear error."""
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        runtime = _cuda_python_runtime()
        if runtime is None:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EdgepipeError(
                f"running TensorRT engines needs pycuda or cuda-python, and neither can be imported ({detail})",
                fix=CUDA_FIX,
            ) from None
        return CudaPython(runtime)
    return cuda


def _cuda_python_runtime() -> Any | None:
    """cuda-python's CUDA runtime module (``cuda.bindings.runtime``; ``cuda.cudart`` before 12.8), or None."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime
        except ImportError:
            return None
    return runtime


class CudaPython:
    """The pycuda calls the engine runner makes (``pycuda.driver``'s names), on cuda-python's runtime API. It
    works on the device's primary context, the one TensorRT uses: ``cudaSetDevice`` makes a context current and
    ``Context.pop`` has nothing to undo."""

    def __init__(self, runtime: Any):
        self.rt = runtime
        self.Context = self  # pycuda's Context.pop()

    def call(self, name: str, *args: Any) -> Any:
        """``runtime.name(*args)``'s value; a CUDA error is one clear error naming the call."""
        err, *values = getattr(self.rt, name)(*args)
        if int(err) != 0:
            text = self.rt.cudaGetErrorString(err)[1]
            reason = text.decode() if isinstance(text, bytes) else str(text)
            raise EdgepipeError(
                f"CUDA {name} failed ({reason})", fix="check the GPU and its driver with nvidia-smi, then run again"
            )
        return values[0] if len(values) == 1 else None

    def init(self) -> None:
        self.call("cudaFree", 0)  # the runtime's usual way to start the primary context

    def Device(self, index: int) -> CudaPython:  # noqa: N802 - pycuda's name
        """pycuda's ``Device(index).retain_primary_context()``: ``push`` makes GPU ``index`` current."""
        self.index = index
        return self

    def retain_primary_context(self) -> CudaPython:
        return self

    def push(self) -> None:
        self.call("cudaSetDevice", self.index)

    def pop(self) -> None:
        """pycuda's ``Context.pop``: the runtime API keeps the primary context; nothing to undo."""

    def Stream(self) -> _Stream:  # noqa: N802 - pycuda's name
        return _Stream(self, self.call("cudaStreamCreate"))

    def Event(self) -> _Event:  # noqa: N802 - pycuda's name
        return _Event(self, self.call("cudaEventCreate"))

    def pagelocked_empty(self, shape: tuple[int, ...], dtype: Any) -> Any:
        """A page-locked host array; ``array.base.free()`` gives it back, as with pycuda."""
        import numpy as np  # not at import: `build --help` reads this module's compute capability only

        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return np.asarray(_HostBuffer(self, self.call("cudaMallocHost", nbytes), shape, dtype))

    def mem_alloc(self, nbytes: int) -> _DeviceBuffer:
        return _DeviceBuffer(self, self.call("cudaMalloc", nbytes))

    def memcpy_htod_async(self, device: _DeviceBuffer, host: Any, stream: _Stream) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.call("cudaMemcpyAsync", int(device), host.ctypes.data, host.nbytes, kind, stream.raw)

    def memcpy_dtoh_async(self, host: Any, device: _DeviceBuffer, stream: _Stream) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.call("cudaMemcpyAsync", host.ctypes.data, int(device), host.nbytes, kind, stream.raw)


class _Stream:
    def __init__(self, api: CudaPython, raw: Any):
        self.api, self.raw, self.handle = api, raw, int(raw)

    def synchronize(self) -> None:
        self.api.call("cudaStreamSynchronize", self.raw)


class _Event:
    def __init__(self, api: CudaPython, raw: Any):
        self.api, self.raw = api, raw

    def record(self, stream: _Stream) -> None:
        self.api.call("cudaEventRecord", self.raw, stream.raw)

    def synchronize(self) -> None:
        self.api.call("cudaEventSynchronize", self.raw)

    def time_till(self, end: _Event) -> float:
        """Milliseconds from this event to ``end``."""
        return float(self.api.call("cudaEventElapsedTime", self.raw, end.raw))


class _DeviceBuffer:
    freed_by = "cudaFree"

    def __init__(self, api: CudaPython, pointer: int):
        self.api, self.pointer = api, int(pointer)

    def __int__(self) -> int:
        return self.pointer

    def free(self) -> None:
        if self.pointer:
            self.api.call(self.freed_by, self.pointer)
            self.pointer = 0


class _HostBuffer(_DeviceBuffer):
    """Page-locked host memory seen by numpy (``np.asarray``) through the array interface."""

    freed_by = "cudaFreeHost"

    def __init__(self, api: CudaPython, pointer: int, shape: tuple[int, ...], dtype: Any):
        import numpy as np  # loaded by pagelocked_empty already

        super().__init__(api, pointer)
        self.__array_interface__ = {"shape": tuple(shape), "typestr": np.dtype(dtype).str, "data": (self.pointer, False), "version": 3}  # fmt: skip


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
    """Compute capability ("X.Y") of GPU 0 from libcuda (microseconds; torch takes a second), or None without a GPU."""
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
    if any(cuda.cuDeviceGetAttribute(ctypes.byref(value), a, 0) != 0 for value, a in ((major, 75), (minor, 76))):
        return None
    return f"{major.value}.{minor.value}"


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
        v = ctypes.c_void_p
        argtypes = {
            "cuStreamBeginCapture_v2": [v, ctypes.c_int],
            "cuStreamEndCapture": [v, ctypes.POINTER(v)],
            "cuGraphInstantiateWithFlags": [ctypes.POINTER(v), v, ctypes.c_ulonglong],
            "cuGraphLaunch": [v, v],
            "cuGraphExecDestroy": [v],
            "cuGraphDestroy": [v],
        }
        for name, types in argtypes.items():
            if not hasattr(self.lib, name):
                raise EdgepipeError(
                    f"--cuda-graph needs {name} from the CUDA driver (CUDA 11.4 or newer)",
                    fix="update the NVIDIA driver, or run without --cuda-graph",
                )
            getattr(self.lib, name).argtypes = types

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
        # CU_STREAM_CAPTURE_MODE_THREAD_LOCAL, as trtexec
        begun = lib.cuStreamBeginCapture_v2(ctypes.c_void_p(stream), 1)
        driver.check(begun, "starting CUDA graph capture", label)
        graph = ctypes.c_void_p()
        try:
            enqueue()
        finally:
            # Always end the capture, so a failed enqueue leaves the stream usable.
            ended = lib.cuStreamEndCapture(ctypes.c_void_p(stream), ctypes.byref(graph))
        driver.check(ended, "capturing the engine in a CUDA graph (the engine may not be capturable)", label)
        executable = ctypes.c_void_p()
        instantiated = lib.cuGraphInstantiateWithFlags(ctypes.byref(executable), graph, 0)
        driver.check(instantiated, "instantiating the CUDA graph", label)
        return cls(driver, graph, executable, label)

    def launch(self, stream: int) -> None:
        launched = self.driver.lib.cuGraphLaunch(self.executable, ctypes.c_void_p(stream))
        self.driver.check(launched, "launching the CUDA graph", self.label)

    def destroy(self) -> None:
        if self.executable:
            self.driver.lib.cuGraphExecDestroy(self.executable)
            self.executable = None
        if self.graph:
            self.driver.lib.cuGraphDestroy(self.graph)
            self.graph = None
