"""What works on this GPU machine, layer by layer, with the exact error of each layer that fails.

    python3 scripts/gpu_probe.py --out probe.json [--onnx model.onnx ...] [--batches 1,32] [--iterations 200]

Layers, in order (a layer runs only when the ones it stands on passed):
  driver          libcuda: cuInit, the GPU's name, compute capability and driver version
  cuda-python     cuda.bindings (NVIDIA's cuda-python): a device allocation and a copy back
  pycuda          buffers, page-locked memory, a stream, events, a copy round trip
  kernel-graph    a plain kernel (pycuda + nvcc) captured as a CUDA graph through edgepipe's pipeline.cuda
  torch-cuda      PyTorch on the GPU: a matrix product and a torch.cuda.CUDAGraph replay
  tensorrt-build  TensorRT-RTX building for ComputeCapability.CURRENT (undocumented on SM 9.0)
  tensorrt-deserialize, tensorrt-enqueue, tensorrt-graph   the CURRENT engine: load, run, CUDA graph replay
  timing          each --onnx built for CURRENT: GPU compute time per batch (CUDA events, no copies)
  tensorrt-foreign an engine built for another target (8.9), deserialized here: the error it gives (last:
                  the likeliest to crash; every layer is on disk as soon as it ends)
PyTorch eager on the GPU, for the speed-up, is measured by edgepipe bench --device cuda (scripts/gpu-check.sh).
Standard library at import time; every third-party import is inside the layer that needs it, so a
missing package is that layer's error, not the probe's. Runs without a GPU too (every layer then
says why it did not run), which is how the fast test suite checks it.
"""

from __future__ import annotations

import ctypes
import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])

from probe_layers import ROOT, check, layer, main_with  # noqa: E402 - beside this file


@layer("driver")
def driver() -> dict:
    lib = ctypes.CDLL("libcuda.so.1")
    count, version = ctypes.c_int(), ctypes.c_int()
    check(lib.cuInit(0), "cuInit")
    check(lib.cuDeviceGetCount(ctypes.byref(count)), "cuDeviceGetCount")
    if count.value < 1:
        raise RuntimeError("the CUDA driver reports no GPU")
    name = ctypes.create_string_buffer(256)
    check(lib.cuDeviceGetName(name, 256, 0), "cuDeviceGetName")
    check(lib.cuDriverGetVersion(ctypes.byref(version)), "cuDriverGetVersion")
    sys.path.insert(0, str(ROOT))
    from pipeline.cuda import current_compute_capability  # edgepipe's own door to libcuda

    return {
        "gpu": name.value.decode(),
        "gpus": count.value,
        "compute_capability": current_compute_capability(),
        "driver_cuda_version": f"{version.value // 1000}.{version.value % 1000 // 10}",
    }


@layer("cuda-python", needs=("driver",))
def cuda_python() -> dict:
    from cuda.bindings import driver as cu

    def ok(result):
        err, *rest = result
        if int(err) != 0:
            raise RuntimeError(f"cuda.bindings error {err}")
        return rest[0] if len(rest) == 1 else rest

    ok(cu.cuInit(0))
    context = ok(cu.cuDevicePrimaryCtxRetain(ok(cu.cuDeviceGet(0))))
    ok(cu.cuCtxPushCurrent(context))
    try:
        data = bytes(range(256)) * 4096
        pointer = ok(cu.cuMemAlloc(len(data)))
        ok(cu.cuMemcpyHtoD(pointer, data, len(data)))
        back = bytearray(len(data))
        ok(cu.cuMemcpyDtoH(back, pointer, len(data)))
        ok(cu.cuMemFree(pointer))
        if bytes(back) != data:
            raise RuntimeError("the bytes copied back differ from those copied in")
    finally:
        ok(cu.cuCtxPopCurrent())
    import cuda.bindings

    return {"cuda_bindings": cuda.bindings.__version__, "bytes_round_trip": len(data)}


@layer("pycuda", needs=("driver",))
def pycuda_buffers() -> dict:
    import numpy as np
    import pycuda
    import pycuda.driver as cuda

    cuda.init()
    context = cuda.Device(0).retain_primary_context()
    context.push()
    try:
        host = cuda.pagelocked_empty((1 << 20,), np.float32)
        host[:] = np.arange(host.size, dtype=np.float32)
        device, back, stream = cuda.mem_alloc(host.nbytes), cuda.pagelocked_empty_like(host), cuda.Stream()
        start, end = cuda.Event(), cuda.Event()
        start.record(stream)
        cuda.memcpy_htod_async(device, host, stream)
        cuda.memcpy_dtoh_async(back, device, stream)
        end.record(stream)
        end.synchronize()
        if not np.array_equal(host, back):
            raise RuntimeError("the copy round trip changed the data")
        facts = {"pycuda": pycuda.VERSION_TEXT, "round_trip_4MiB_ms": round(start.time_till(end), 4)}
        device.free()
    finally:
        cuda.Context.pop()
    return facts


KERNEL = "__global__ void add_one(float *x, int n) { int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) x[i] += 1.0f; }"


@layer("kernel-graph", needs=("pycuda",))
def kernel_graph() -> dict:
    import numpy as np
    import pycuda.driver as cuda
    from pycuda.compiler import SourceModule

    from pipeline.cuda import CudaGraph, Driver  # edgepipe's CUDA graph capture, exercised without TensorRT

    context = cuda.Device(0).retain_primary_context()
    context.push()
    try:
        add_one = SourceModule(KERNEL).get_function("add_one")
        n = 1 << 16
        x = np.zeros(n, np.float32)
        device, stream = cuda.mem_alloc(x.nbytes), cuda.Stream()
        cuda.memcpy_htod(device, x)
        launch = lambda: add_one(device, np.int32(n), block=(256, 1, 1), grid=(n // 256, 1), stream=stream)  # noqa: E731
        graph = CudaGraph.capture(Driver(), stream.handle, launch, "probe")
        for _ in range(3):
            graph.launch(stream.handle)
        stream.synchronize()
        cuda.memcpy_dtoh(x, device)
        graph.destroy()
        device.free()
    finally:
        cuda.Context.pop()
    if not np.all(x == 3.0):
        raise RuntimeError(f"3 graph replays gave {float(x.min())}..{float(x.max())}, not 3.0 everywhere")
    return {"replays": 3}


@layer("torch-cuda", needs=("driver",))
def torch_cuda() -> dict:
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("torch.cuda.is_available() is False")
    a = torch.randn(1024, 1024, device="cuda")
    static = torch.zeros_like(a)
    graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream()
    with torch.cuda.stream(stream):
        static.copy_(a @ a)  # warm-up outside the capture
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        static.copy_(a @ a)
    graph.replay()
    torch.cuda.synchronize()
    diff = (static - a @ a).abs().max().item()
    if diff > 1e-2:
        raise RuntimeError(f"the graph replay differs from eager by {diff}")
    return {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "device": torch.cuda.get_device_name(0)}


CUDA_LAYERS = (driver, cuda_python, pycuda_buffers, kernel_graph, torch_cuda)

if __name__ == "__main__":
    import probe_tensorrt  # the TensorRT layers and the timing, beside this file

    sys.exit(main_with(CUDA_LAYERS, probe_tensorrt, sys.argv[1:]))
