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
from pipeline.runner import Runner


class OnnxReferenceRunner(Runner):
    def __init__(self, path: str | Path):
        from onnx.reference import ReferenceEvaluator  # builds its operator table on import: only when it runs

        model = load_onnx(path)
        initializers = {init.name for init in model.graph.initializer}
        inputs = [value for value in model.graph.input if value.name not in initializers]
        if len(inputs) != 1:
            raise EdgepipeError(
                f"the model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); edgepipe runs models with one image input",
                fix="export a model with a single image input",
            )
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
        tensor = inputs[0].type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        self.input_name = inputs[0].name
        self.batch_size = dims[0] if dims and dims[0] else None
        self.input_shape = tuple(dims[1:]) if all(dims[1:]) else None
        self.input_dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))

    def infer_impl(self, batch: np.ndarray) -> list[np.ndarray]:
        outputs = self.session.run(None, {self.input_name: batch.astype(self.input_dtype, copy=False)})
        return [np.asarray(o).astype(np.float32, copy=False) for o in outputs]

    def close(self) -> None:
        self.session = None
