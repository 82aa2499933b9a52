"""The probe's TensorRT layers: TensorRT-RTX on this GPU with ComputeCapability.CURRENT, and engine timing.

Buffers are PyTorch CUDA tensors and the stream a PyTorch stream, so these layers stand on
torch-cuda alone and say what TensorRT-RTX does even where pycuda did not build. edgepipe's own
runner (pycuda) is proven by ``pytest -m gpu``.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from probe_layers import layer, passed, record

SHAPE = (1, 32, 32)  # channels, height, width of the probe's own model
PROFILE = (1, 8, 32)  # min, opt, max batch


class Log:
    """A TensorRT logger that keeps every message, so an error is quoted exactly."""

    def __init__(self, trt):
        base = trt.ILogger

        class Keep(base):
            def __init__(self):
                base.__init__(self)
                self.messages = []

            def log(self, severity, msg):
                self.messages.append(f"{severity}: {msg}")

        self.logger = Keep()

    def last(self, n: int = 3) -> str:
        """The last errors TensorRT logged (the last messages of any kind where it logged no error)."""
        messages = self.logger.messages
        errors = [m for m in messages if "ERROR" in m or "INTERNAL" in m] or messages
        return " | ".join(errors[-n:]) or "no message from TensorRT"


def tiny_onnx(folder: Path) -> Path:
    """A Conv-ReLU-GlobalAveragePool-Gemm classifier with a dynamic batch, made with onnx.helper."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((8, 1, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal((10, 8)).astype(np.float32), "fc"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "probe",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *SHAPE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "probe.onnx"
    onnx.save(model, path)
    return path


def build(trt, onnx_path: Path, target: str) -> bytes:
    """A serialized engine for ``target`` ("CURRENT" or "SM89"); RuntimeError quoting TensorRT otherwise."""
    log = Log(trt)
    builder = trt.Builder(log.logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, log.logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise RuntimeError(f"parse: {[str(parser.get_error(i)) for i in range(parser.num_errors)]}")
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    tensor = network.get_input(0)
    dims = tuple(tensor.shape)[1:]
    profile.set_shape(tensor.name, *((b, *dims) for b in PROFILE))
    config.add_optimization_profile(profile)
    config.num_compute_capabilities = 1
    config.set_compute_capability(getattr(trt.ComputeCapability, target), 0)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"build for ComputeCapability.{target} returned None: {log.last()}")
    return bytes(serialized)


def load(trt, engine_bytes: bytes):
    log = Log(trt)
    runtime = trt.Runtime(log.logger)
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise RuntimeError(f"deserialize_cuda_engine returned None: {log.last()}")
    return runtime, engine, log


class Bound:
    """An execution context with PyTorch CUDA tensors bound to every I/O tensor at one batch size."""

    def __init__(self, trt, engine, batch: int):
        import numpy as np
        import torch

        self.context = engine.create_execution_context()
        self.tensors = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = torch.from_numpy(np.empty(0, trt.nptype(engine.get_tensor_dtype(name)))).dtype
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.input = name
                shape = (batch, *tuple(engine.get_tensor_shape(name))[1:])
                self.context.set_input_shape(name, shape)
                self.tensors[name] = torch.randn(shape, device="cuda").to(dtype)
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if name not in self.tensors:
                dtype = torch.from_numpy(np.empty(0, trt.nptype(engine.get_tensor_dtype(name)))).dtype
                self.tensors[name] = torch.empty(tuple(self.context.get_tensor_shape(name)), device="cuda", dtype=dtype)
        for name, t in self.tensors.items():
            self.context.set_tensor_address(name, t.data_ptr())

    def enqueue(self, stream) -> None:
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("execute_async_v3 returned False")


@layer("tensorrt-build", needs=("driver",))
def tensorrt_build(onnx_path: Path) -> dict:
    import tensorrt_rtx as trt

    return {"tensorrt_rtx": trt.__version__, "engine_bytes": len(build(trt, onnx_path, "CURRENT"))}


@layer("tensorrt-foreign", needs=("driver",))
def tensorrt_foreign(onnx_path: Path) -> dict:
    """An engine for SM 8.9 (built ahead of time, as on the CPU) loaded on this GPU: TensorRT's own answer."""
    import tensorrt_rtx as trt

    try:
        load(trt, build(trt, onnx_path, "SM89"))
    except RuntimeError as exc:
        return {"loads": False, "error_quoted": str(exc)}
    return {"loads": True}


def engine_checks(onnx_path: Path) -> None:
    if not passed("tensorrt-build"):
        for name in ("tensorrt-deserialize", "tensorrt-enqueue", "tensorrt-graph"):
            record({"layer": name, "ok": None, "skipped": "needs tensorrt-build"})
        return
    import tensorrt_rtx as trt

    held = deserialize(trt, build(trt, onnx_path, "CURRENT"))
    enqueue(trt, held, onnx_path)
    graph_replay(trt, held)


@layer("tensorrt-deserialize", needs=("tensorrt-build",))
def deserialize(trt, engine_bytes: bytes):
    runtime, engine, log = load(trt, engine_bytes)
    return {"io_tensors": engine.num_io_tensors, "held": (runtime, engine, log)}


@layer("tensorrt-enqueue", needs=("tensorrt-deserialize", "torch-cuda"))
def enqueue(trt, held, onnx_path: Path) -> dict:
    import numpy as np
    import onnxruntime
    import torch

    bound = Bound(trt, held["held"][1], 8)
    stream = torch.cuda.Stream()
    bound.enqueue(stream)
    stream.synchronize()
    x = bound.tensors[bound.input].float().cpu().numpy()
    out = [t for n, t in bound.tensors.items() if n != bound.input][0].float().cpu().numpy()
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: x})[0]
    diff = float(np.abs(out - expected).max())
    if diff > 1e-2:
        raise RuntimeError(f"engine output differs from ONNX Runtime by {diff}")
    return {"max_abs_diff_vs_onnxruntime": diff}


@layer("tensorrt-graph", needs=("tensorrt-enqueue",))
def graph_replay(trt, held) -> dict:
    import torch

    bound = Bound(trt, held["held"][1], 8)
    out = [t for n, t in bound.tensors.items() if n != bound.input][0]
    stream = torch.cuda.Stream()
    bound.enqueue(stream)  # TensorRT finishes shape-dependent setup outside the capture
    stream.synchronize()
    expected = out.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        bound.enqueue(torch.cuda.current_stream())
    out.zero_()
    graph.replay()
    torch.cuda.synchronize()
    diff = (out.float() - expected.float()).abs().max().item()
    if diff > 1e-5:
        raise RuntimeError(f"the graph replay differs from the plain enqueue by {diff}")
    return {"max_abs_diff_replay": diff}


@layer("timing", needs=("tensorrt-enqueue",))
def timing(onnx_paths: list[Path], batches: list[int], iterations: int) -> dict:
    """GPU compute per enqueue (CUDA events, no copies, no CUDA graph), median and p90, per model and batch."""
    import tensorrt_rtx as trt
    import torch

    rows = []
    for onnx_path in onnx_paths:
        try:
            _runtime, engine, _log = load(trt, build(trt, onnx_path, "CURRENT"))
        except RuntimeError as exc:
            rows.append({"onnx": onnx_path.name, "error": str(exc)})
            continue
        for batch in batches:
            bound, stream = Bound(trt, engine, batch), torch.cuda.Stream()
            samples = []
            for i in range(iterations + 20):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record(stream)
                bound.enqueue(stream)
                end.record(stream)
                end.synchronize()
                if i >= 20:  # warm-up
                    samples.append(start.elapsed_time(end))
            samples.sort()
            rows.append(
                {
                    "onnx": onnx_path.name,
                    "batch": batch,
                    "median_ms": round(statistics.median(samples), 4),
                    "p90_ms": round(samples[int(0.9 * len(samples))], 4),
                }
            )
    return {
        "how": "TensorRT-RTX, ComputeCapability.CURRENT, compute only (CUDA events around execute_async_v3)",
        "rows": rows,
    }


def run_layers(onnx_paths: list[Path], batches: list[int], iterations: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        try:
            probe_model = tiny_onnx(Path(folder))
        except Exception as exc:  # no onnx: the TensorRT layers then say so
            probe_model = Path(folder) / f"no-probe-model ({type(exc).__name__}: {exc})"
        tensorrt_build(probe_model)
        engine_checks(probe_model)
        if onnx_paths:
            timing(onnx_paths, batches, iterations)
        tensorrt_foreign(probe_model)  # last: loading another GPU's engine is the likeliest to crash
