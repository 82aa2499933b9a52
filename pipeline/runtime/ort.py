"""The ONNX Runtime runner: ONNX models at any precision, on the CPU (or ONNX Runtime's CUDA provider)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import EdgepipeError
from pipeline.onnxinfo import cpu_session
from pipeline.runner import SessionRunner

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


class OnnxRuntimeRunner(SessionRunner):
    def __init__(self, model: str | Path, device: str = "cpu"):
        import onnxruntime  # noqa: F401 - without it, an ImportError rather than a model ONNX Runtime "cannot load"

        try:
            self.session = cpu_session(str(model), cuda=device == "cuda")
        except Exception as exc:  # ORT raises its own exception types for invalid graphs
            raise EdgepipeError(
                f"ONNX Runtime cannot load {model}: {str(exc).splitlines()[0][:200]}",
                fix="check the model with 'onnx.checker' or export it again",
            )
        self.name = "onnxruntime-" + self.session.get_providers()[0].replace("ExecutionProvider", "").lower()
        inputs = self.session.get_inputs()
        self.take_input([i.name for i in inputs], inputs[0].shape if inputs else ())
        self.input_dtype = _ORT_TYPES.get(inputs[0].type, np.float32)
