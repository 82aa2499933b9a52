"""The ONNX Runtime runner: ONNX models at any precision, on the CPU (or ONNX Runtime's CUDA provider)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.defaults import ORT_DISABLED_OPTIMIZERS
from pipeline.errors import EdgepipeError
from pipeline.runner import Runner

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


class OnnxRuntimeRunner(Runner):
    def __init__(self, model: str | Path, device: str = "cpu"):
        import onnxruntime as ort  # a second to import: only runs that feed ONNX Runtime pay for it

        providers = ["CPUExecutionProvider"]
        if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(model), options, providers=providers, disabled_optimizers=list(ORT_DISABLED_OPTIMIZERS)
            )
        except Exception as exc:  # ORT raises its own exception types for invalid graphs
            raise EdgepipeError(
                f"ONNX Runtime cannot load {model}: {str(exc).splitlines()[0][:200]}",
                fix="check the model with 'onnx.checker' or export it again",
            )
        self.name = "onnxruntime-" + self.session.get_providers()[0].replace("ExecutionProvider", "").lower()
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            names = ", ".join(i.name for i in inputs)
            raise EdgepipeError(
                f"the model has {len(inputs)} inputs ({names}); edgepipe runs models with one image input",
                fix="export a model with a single image input",
            )
        first = inputs[0]
        self.input_name = first.name
        self.batch_size = first.shape[0] if isinstance(first.shape[0], int) else None
        dims = first.shape[1:]
        self.input_shape = tuple(dims) if all(isinstance(d, int) and d > 0 for d in dims) else None
        # An FP16 graph with FP16 inputs gets the float32 batch converted here.
        self.input_dtype = _ORT_TYPES.get(first.type, np.float32)

    def infer_impl(self, batch: np.ndarray) -> list[np.ndarray]:
        if self.input_dtype is not np.float32:
            batch = batch.astype(self.input_dtype)
        return [np.asarray(o).astype(np.float32, copy=False) for o in self.session.run(None, {self.input_name: batch})]

    def close(self) -> None:
        self.session = None
