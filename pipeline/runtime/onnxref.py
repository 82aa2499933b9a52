"""The ONNX reference runner: onnx's own evaluator (numpy), where ONNX Runtime is not installed.

A light device install (no ONNX Runtime) still checks an ONNX against a bundle's golden outputs.
``onnx.reference.ReferenceEvaluator`` runs every standard operator, Q/DQ and FP16 casts included,
in numpy: far slower than ONNX Runtime (fine for a few golden images, not for benchmarks). It
implements some operators only at their newer versions (QuantizeLinear/DequantizeLinear from opset
19): a model it cannot load as written is evaluated converted to opset 21 by onnx's version
converter (the same arithmetic for the int8 Q/DQ TensorRT builds).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter

from pipeline.errors import EdgepipeError
from pipeline.onnxfile import load_onnx
from pipeline.onnxinfo import graph_inputs
from pipeline.runner import SessionRunner


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
