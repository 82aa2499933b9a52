"""The ONNX runners: ONNX Runtime (any precision, on the CPU or its CUDA provider), and onnx's own evaluator.

On a light device install (no ONNX Runtime) onnx's ``ReferenceEvaluator`` checks an ONNX against a
bundle's golden outputs, in numpy: far slower (fine for a few golden images, not for benchmarks). It
implements some operators only at newer versions (QuantizeLinear/DequantizeLinear from opset 19): a
model it cannot load as written is converted to opset 21 (the same arithmetic for int8 Q/DQ).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter

from pipeline.errors import EdgepipeError
from pipeline.onnxfile import load_onnx
from pipeline.onnxinfo import cpu_session, graph_inputs
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


class OnnxReferenceRunner(SessionRunner):
    def __init__(self, path: str | Path):
        from onnx.reference import ReferenceEvaluator  # builds its operator table on import: only when it runs

        model = load_onnx(path)
        inputs = graph_inputs(model)
        self.take_input([i.name for i in inputs], inputs[0].shape if inputs else ())
        try:
            try:
                self.session = ReferenceEvaluator(model)
            except Exception as exc:  # it lacks an operator's older version: the model converted to opset 21
                if "No implementation for operator" not in str(exc):
                    raise
                self.session = ReferenceEvaluator(onnx.version_converter.convert_version(model, 21))
        except Exception as exc:  # an operator the evaluator lacks, an invalid graph
            raise EdgepipeError(
                f"onnx's reference evaluator cannot load {path}: {str(exc).strip().splitlines()[0][:200]}",
                fix="pip install onnxruntime (or 'edgepipe[quantize]') to run it on ONNX Runtime",
            )
        self.name = f"onnx-reference-{onnx.__version__}"
        self.input_dtype = np.dtype(inputs[0].dtype)
