"""Running TensorRT engines on the GPU, through ``pipeline.cuda`` (pycuda or cuda-python, libcuda for CUDA graphs).

Four CUDA events per inference report H2D, GPU compute and D2H apart, like trtexec. Buffers are
page-locked and sized once for the largest batch of the engine's optimization profile. Two TensorRT
APIs, chosen by what the engine has: bindings (TensorRT 8.x/9.x, JetPack 5's 8.5) while it has them,
else tensor addresses (TensorRT 10.x/11.x and TensorRT-RTX).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.cuda import CudaGraph, Driver, import_cuda
from pipeline.errors import EdgepipeError
from pipeline.runner import Runner


@dataclass
class _Tensor:
    name: str
    index: int  # binding index (bindings API) or I/O tensor index
    is_input: bool
    dtype: Any  # numpy dtype of the engine's tensor
    shape: tuple[int, ...]  # engine shape, -1 for dynamic dimensions
    host: Any = None  # page-locked host buffer for the largest batch
    device: Any = None  # device allocation for the largest batch


class TensorRTRunner(Runner):
    def __init__(
        self, engine_bytes: bytes, backend: Any, cuda_graph: bool = False, device_index: int = 0, label: str = "engine"
    ):
        self._cuda = cuda = import_cuda()
        self.backend = backend
        self.label = label
        self.name = f"{backend.name}-{backend.version}"
        self._pushed = False
        cuda.init()
        # The primary context is the one the CUDA runtime (TensorRT, PyTorch) uses, so they share it.
        self._context = cuda.Device(device_index).retain_primary_context()
        self._context.push()
        self._pushed = True
        try:
            self._setup(engine_bytes, cuda_graph)
        except BaseException:
            self.close()
            raise

    def _setup(self, engine_bytes: bytes, cuda_graph: bool) -> None:
        cuda, trt = self._cuda, self.backend.trt
        self.engine = self.backend.deserialize(engine_bytes)
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise EdgepipeError(
                f"{self.label}: TensorRT could not create an execution context (out of GPU memory?)",
                fix="free GPU memory (other processes) and run again",
            )
        self.api = "bindings" if hasattr(self.engine, "get_binding_index") else "tensors"
        self.tensors = self._tensors(trt)
        inputs = [t for t in self.tensors if t.is_input]
        if len(inputs) != 1:
            raise EdgepipeError(
                f"{self.label} has {len(inputs)} inputs; edgepipe runs image classifiers with one",
                fix="build the engine from an ONNX with a single image input",
            )
        self.input = inputs[0]
        self.outputs = [t for t in self.tensors if not t.is_input]
        self.input_shape = tuple(self.input.shape[1:])
        lo, hi = self._batch_range()
        if lo == hi and self.input.shape[0] != -1:
            self.batch_size = lo
        self.min_batch, self.max_batch = lo, hi

        self.stream = cuda.Stream()
        self._events = [cuda.Event() for _ in range(4)]
        self._bindings = [0] * len(self.tensors)  # device addresses by binding index (bindings API)
        for t in self.tensors:
            shape = (hi, *t.shape[1:]) if t.shape and t.shape[0] == -1 else t.shape
            t.host = cuda.pagelocked_empty(tuple(max(int(d), 1) for d in shape), t.dtype)
            t.device = cuda.mem_alloc(max(t.host.nbytes, 1))
            if self.api == "bindings":
                self._bindings[t.index] = int(t.device)
            else:
                self.context.set_tensor_address(t.name, int(t.device))
        self._current_batch: int | None = None
        self._graphs: dict[int, CudaGraph] = {}
        self._driver = Driver() if cuda_graph else None
        self._timing: dict[str, float] | None = None

    def _tensors(self, trt: Any) -> list[_Tensor]:
        """Every input and output, in the engine's order, through whichever API it has."""
        e = self.engine

        def tensor(name: str, index: int, is_input: bool, dtype: Any, shape: Any) -> _Tensor:
            return _Tensor(name, index, is_input, np.dtype(trt.nptype(dtype)), tuple(shape))

        if self.api == "bindings":
            return [
                tensor(e.get_binding_name(i), i, e.binding_is_input(i), e.get_binding_dtype(i), e.get_binding_shape(i))
                for i in range(e.num_bindings)
            ]
        names = [e.get_tensor_name(i) for i in range(e.num_io_tensors)]
        return [
            tensor(n, i, e.get_tensor_mode(n) == trt.TensorIOMode.INPUT, e.get_tensor_dtype(n), e.get_tensor_shape(n))
            for i, n in enumerate(names)
        ]

    def _batch_range(self) -> tuple[int, int]:
        """(min, max) batch of optimization profile 0 (the static batch for a static engine)."""
        t = self.input
        if t.shape[0] != -1:
            return t.shape[0], t.shape[0]
        if self.api == "bindings":
            lo, _opt, hi = self.engine.get_profile_shape(0, t.index)
        else:
            lo, _opt, hi = self.engine.get_tensor_profile_shape(t.name, 0)
        return int(lo[0]), int(hi[0])

    def device_memory_bytes(self) -> int | None:
        """Activation memory the engine needs (weights not included), as trtexec reports it."""
        for attribute in ("device_memory_size_v2", "device_memory_size"):
            if hasattr(self.engine, attribute):
                return int(getattr(self.engine, attribute))
        return None

    def _set_batch(self, n: int) -> None:
        if n == self._current_batch:
            return
        shape = (n, *self.input.shape[1:])
        if self.api == "bindings":
            ok = self.context.set_binding_shape(self.input.index, shape)
        else:
            ok = self.context.set_input_shape(self.input.name, shape)
        if ok is False:
            raise EdgepipeError(
                f"{self.label}: TensorRT refused input shape {shape}",
                fix=f"use a batch from {self.min_batch} to {self.max_batch}",
            )
        self._current_batch = n

    def _enqueue(self) -> None:
        if self.api == "bindings":
            ok = self.context.execute_async_v2(bindings=self._bindings, stream_handle=self.stream.handle)
        else:
            ok = self.context.execute_async_v3(stream_handle=self.stream.handle)
        if ok is False:
            raise EdgepipeError(
                f"{self.label}: TensorRT failed to run the engine: {self.backend.logger.last_error() or 'no reason given'}",
                fix="run again; if it persists, rebuild the engine on this machine",
            )

    def _compute(self, n: int) -> None:
        """The engine's work on the stream: a CUDA graph replay when asked for, else an enqueue."""
        if self._driver is None:
            self._enqueue()
            return
        graph = self._graphs.get(n)
        if graph is None:
            # One plain run first: TensorRT finishes shape-dependent setup outside the capture.
            self._enqueue()
            self.stream.synchronize()
            graph = self._graphs[n] = CudaGraph.capture(self._driver, self.stream.handle, self._enqueue, self.label)
        graph.launch(self.stream.handle)

    def infer_impl(self, batch: np.ndarray) -> list[np.ndarray]:
        cuda = self._cuda
        n = batch.shape[0]
        self._set_batch(n)
        host_in = self.input.host[:n]
        np.copyto(host_in, batch, casting="unsafe")  # float32 -> the engine's input type (e.g. FP16)
        start, copied_in, computed, copied_out = self._events
        start.record(self.stream)
        cuda.memcpy_htod_async(self.input.device, host_in, self.stream)
        copied_in.record(self.stream)
        self._compute(n)
        computed.record(self.stream)
        results, context, bindings = [], self.context, self.api == "bindings"
        for t in self.outputs:
            shape = tuple(context.get_binding_shape(t.index) if bindings else context.get_tensor_shape(t.name))
            host_out = t.host.reshape(-1)[: int(np.prod(shape))].reshape(shape)
            cuda.memcpy_dtoh_async(host_out, t.device, self.stream)
            results.append(host_out)
        copied_out.record(self.stream)
        copied_out.synchronize()
        splits = zip(("h2d_ms", "compute_ms", "d2h_ms"), self._events, self._events[1:])
        self._timing = {key: begin.time_till(end) for key, begin, end in splits}  # H2D, compute, D2H apart
        return [np.array(r, dtype=np.float32) for r in results]  # copies: the host buffers are reused

    def last_timing(self) -> dict[str, float] | None:
        return self._timing

    def close(self) -> None:
        for graph in getattr(self, "_graphs", {}).values():
            graph.destroy()
        self._graphs = {}
        for t in getattr(self, "tensors", []):
            if t.device is not None:
                t.device.free()
                t.device = None
            if t.host is not None:
                t.host.base.free()  # page-locked memory goes back while its context is current
                t.host = None
        self.context = self.engine = None
        if self._pushed:
            self._cuda.Context.pop()
            self._pushed = False
