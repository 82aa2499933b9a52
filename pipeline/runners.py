"""Runners: one interface (feed a batch, get logits) over PyTorch, ONNX Runtime and TensorRT.

Like Polygraphy's runners, each wraps one runtime; ``predict`` feeds a whole array through any
of them in batches, padding the last batch when a model takes a fixed batch size.

Every runner takes float32 NCHW batches (the model's preprocessing already applied) and returns
float32 logits; a runner whose model wants another input type converts inside. A batch of the
wrong type, shape or size is a clear ``EdgepipeError`` naming what was expected and what came.

The TensorRT runner lives in ``pipeline.trt_runner`` (the only module that imports pycuda);
``load_runner`` picks it for .engine/.plan files, after checking the engine's manifest against
the installed TensorRT and the GPU, before anything touches the GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.errors import EdgepipeError

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
CHECKPOINT_SUFFIXES = (".pt", ".pth")


class NoGpuError(EdgepipeError):
    """Running this artifact needs an NVIDIA GPU and there is none: a skip, not a failure."""


class Runner:
    name = "runner"  # runtime and device, e.g. "pytorch-cpu", "onnxruntime-cpu", "tensorrt-rtx-1.7"
    batch_size: int | None = None  # fixed batch the artifact takes; None when dynamic
    min_batch: int = 1  # smallest batch accepted (a TensorRT profile's min)
    max_batch: int | None = None  # largest batch accepted (a TensorRT profile's max); None: no limit
    input_shape: tuple[int, ...] | None = None  # one sample's shape (C, H, W) when known

    def infer(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def last_timing(self) -> dict[str, float] | None:
        """H2D, GPU compute and D2H times (ms) of the last ``infer``, where the runtime has them."""
        return None

    def device_memory_bytes(self) -> int | None:
        """Device memory the model needs besides its weights (TensorRT's activation memory)."""
        return None

    def close(self) -> None:
        """Free what the runner holds (GPU buffers, contexts); a no-op for most runners."""

    def check_input(self, batch: Any) -> np.ndarray:
        """``batch`` if it is a float32 NCHW array this runner accepts, else a clear error."""
        return check_batch(self.name, batch, self.input_shape, self.batch_size, self.min_batch, self.max_batch)


def check_batch(name: str, batch: Any, input_shape: tuple[int, ...] | None, fixed: int | None, least: int = 1, most: int | None = None) -> np.ndarray:
    """Check one input batch against what a runner takes; the message names expected vs got."""
    if not isinstance(batch, np.ndarray):
        raise EdgepipeError(f"{name} takes a numpy array; got {type(batch).__name__}", fix="pass np.asarray(batch, dtype=np.float32)")
    if batch.dtype != np.float32:
        raise EdgepipeError(f"{name} takes float32 input; got {batch.dtype}", fix="convert the batch with batch.astype(np.float32) after the model's normalization")
    expected = ("N", *input_shape) if input_shape else ("N", "C", "H", "W")
    if batch.ndim != len(expected) or (input_shape and tuple(batch.shape[1:]) != tuple(input_shape)):
        raise EdgepipeError(
            f"{name} takes input of shape {_shape_text(expected)}; got {_shape_text(batch.shape)}",
            fix="resize the images to the model's input size (the checkpoint's input_shape) and keep NCHW order",
        )
    n = batch.shape[0]
    if fixed and n != fixed:
        raise EdgepipeError(f"{name} takes a fixed batch of {fixed}; got {n}", fix="feed it through runners.predict (which pads the last batch), or export with --dynamic-batch")
    if n < least or (most is not None and n > most):
        raise EdgepipeError(
            f"batch {n} is outside what {name} allows (its optimization profile takes {least} to {most})",
            fix=f"use a batch from {least} to {most}, or rebuild the engine with --maxShapes input:{n}x...",
        )
    return batch


def _shape_text(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


class TorchRunner(Runner):
    def __init__(self, model: torch.nn.Module, device: str = "cpu", input_shape: tuple[int, ...] | None = None):
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise NoGpuError("PyTorch sees no CUDA GPU", fix="pass --device cpu, or install a CUDA build of torch on a GPU host")
        self.name = f"pytorch-{torch.device(device).type}"
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.input_shape = tuple(input_shape) if input_shape else None

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, device: str = "cpu") -> "TorchRunner":
        """The PyTorch reference for a checkpoint, with the input shape its config records."""
        from pipeline.train import load_checkpoint

        model, config = load_checkpoint(checkpoint)
        runner = cls(model, device=device, input_shape=tuple(config["input_shape"]))
        runner.config = config
        return runner

    def infer(self, batch: np.ndarray) -> np.ndarray:
        batch = self.check_input(batch)
        with torch.inference_mode():
            # .cpu() waits for the GPU, so a timed call covers the whole inference.
            return self.model(torch.from_numpy(batch).to(self.device)).float().cpu().numpy()


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


class OnnxRuntimeRunner(Runner):
    def __init__(self, model: str | Path | bytes, providers: list[str] | None = None, device: str = "cpu"):
        import onnxruntime as ort

        if providers is None:
            providers = ["CPUExecutionProvider"]
            if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
                providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(source, options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types for invalid graphs
            raise EdgepipeError(f"ONNX Runtime cannot load {model if not isinstance(model, bytes) else 'the model'}: {str(exc).splitlines()[0][:200]}", fix="check the model with 'onnx.checker' or export it again")
        self.name = "onnxruntime-" + self.session.get_providers()[0].replace("ExecutionProvider", "").lower()
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.batch_size = first.shape[0] if isinstance(first.shape[0], int) else None
        dims = first.shape[1:]
        self.input_shape = tuple(dims) if all(isinstance(d, int) and d > 0 for d in dims) else None
        # An FP16 graph with FP16 inputs gets the float32 batch converted here.
        self.input_dtype = _ORT_TYPES.get(first.type, np.float32)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        batch = self.check_input(batch)
        if self.input_dtype is not np.float32:
            batch = batch.astype(self.input_dtype)
        return self.session.run(None, {self.input_name: batch})[0].astype(np.float32)


def predict(runner: Runner, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Logits for all ``images``; respects a runner's fixed batch size by padding the last batch."""
    step = runner.batch_size or min(batch_size, runner.max_batch or batch_size)
    outputs = []
    for start in range(0, len(images), step):
        batch = images[start : start + step]
        real = len(batch)
        if runner.batch_size and real < step:
            batch = np.concatenate([batch, np.repeat(batch[-1:], step - real, axis=0)])
        outputs.append(runner.infer(np.ascontiguousarray(batch))[:real])
    return np.concatenate(outputs)


def artifact_kind(path: str | Path) -> str:
    """ "pytorch", "onnx" or "engine", from the file's suffix."""
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in ENGINE_SUFFIXES:
        return "engine"
    if suffix in CHECKPOINT_SUFFIXES:
        return "pytorch"
    raise EdgepipeError(f"cannot tell what {path} is from its suffix", fix="pass an .onnx model, a .engine/.plan file or a .pt checkpoint")


def load_runner(artifact: str | Path, device: str = "cpu", cuda_graph: bool = False) -> Runner:
    """The runner for an artifact file, chosen by its type (.onnx, a TensorRT engine, a checkpoint).

    ``device`` places PyTorch and ONNX Runtime ("cuda": ONNX Runtime's CUDA provider where it is
    installed); TensorRT engines always run on the GPU, optionally replayed as a CUDA graph.
    """
    path = Path(artifact)
    if not path.is_file():
        raise EdgepipeError(f"artifact {path} does not exist", fix="pass an .onnx model or a TensorRT engine file")
    kind = artifact_kind(path)
    if kind == "onnx":
        return OnnxRuntimeRunner(path, device=device)
    if kind == "pytorch":
        return TorchRunner.from_checkpoint(path, device=device)
    return load_engine_runner(path, cuda_graph=cuda_graph)


def load_engine_runner(path: Path, cuda_graph: bool = False) -> Runner:
    """A TensorRT runner, after the checks that need no GPU: backend, version, target GPU.

    Without a GPU this raises ``NoGpuError`` once the engine has passed those checks, so an
    engine built for another TensorRT is still reported as such on a CPU-only machine.
    """
    from pipeline import backend as backendmod
    from pipeline import build

    be = backendmod.get_backend(engine_backend_name(path))
    device_cc = backendmod.current_compute_capability()
    build.check_engine_runtime(path, be, device_cc)
    if device_cc is None:
        raise NoGpuError(f"running TensorRT engine {path} needs an NVIDIA GPU, and this machine has none", fix="run it on a GPU host; here, validate and bench the .onnx it was built from")
    from pipeline import trt_runner

    return trt_runner.TensorRTRunner(path.read_bytes(), be, cuda_graph=cuda_graph, label=path.name)


def engine_backend_name(path: str | Path) -> str:
    """The backend an engine's manifest names ("tensorrt" or "tensorrt-rtx"), else "auto"."""
    from pipeline import backend as backendmod
    from pipeline.artifacts import read_manifest

    manifest = read_manifest(path) or {}
    return manifest.get("backend") if manifest.get("backend") in backendmod.BACKENDS else "auto"


def artifact_precision(path: str | Path) -> str:
    """fp32/fp16/int8 of an artifact: its manifest's record, else a guess from the file name."""
    from pipeline.artifacts import read_manifest

    manifest = read_manifest(path) or {}
    precision = manifest.get("precision") or manifest.get("params", {}).get("precision")
    if precision:
        return str(precision)
    if Path(path).suffix == ".onnx":
        try:
            from pipeline.onnxfile import load_onnx
            from pipeline.precision import detect_precision

            return detect_precision(load_onnx(path))
        except (ImportError, EdgepipeError):
            pass
    name = Path(path).name.lower()
    return next((p for p in ("int8", "fp16", "fp32") if p in name), "fp32")
