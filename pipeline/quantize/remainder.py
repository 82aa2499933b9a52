"""The high-precision remainder of an INT8 model: what is not quantized, in FP16 with --fp16's block list, or FP32.

ModelOpt's INT8 path converts every op it does not quantize to FP16 with no block list: LayerNorm,
Softmax, reductions, Pow, and the Q/DQ scales themselves. Here ModelOpt quantizes with an FP32
remainder, and the remainder is converted the way ``--fp16`` converts a model (ModelOpt AutoCast,
``FP16_FP32_OPS`` kept FP32), with the Q/DQ nodes whose scale would underflow FP16 (below its
smallest normal number, 6.1e-5: a near-dead depthwise channel's 1.8e-7 is a subnormal) kept FP32 too.

``ceiling`` is the budget's upper bound: the model with every Q/DQ removed and the remainder as
built. Where it already misses the budget, no choice of nodes to keep out of INT8 can meet it.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
import onnx

from pipeline.precision import QDQ_OPS
from pipeline.quantize.fp16 import FP16_FP32_OPS
from pipeline.quantize.modelopt_log import modelopt_error, quiet_modelopt

FP16_SMALLEST_NORMAL = 6.104e-5


def underflowing_qdq(model: onnx.ModelProto) -> list[str]:
    """Q/DQ nodes whose scale (any channel's) is below FP16's smallest normal number."""
    scales = {init.name: init for init in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type in QDQ_OPS and node.input[1] in scales:
            value = np.abs(onnx.numpy_helper.to_array(scales[node.input[1]]).astype(np.float64))
            if value.size and float(value.min()) < FP16_SMALLEST_NORMAL:
                names.append(node.name)
    return names


def build(model: onnx.ModelProto, high_precision: str) -> onnx.ModelProto:
    """``model`` (Q/DQ, every other op FP32) with its remainder in ``high_precision`` (fp32: as it is)."""
    if high_precision == "fp32":
        return model
    from modelopt.onnx.autocast import convert_to_mixed_precision  # ModelOpt takes seconds to import

    keep = [f"^{re.escape(name)}$" for name in underflowing_qdq(model)]
    with tempfile.TemporaryDirectory(prefix="edgepipe-int8-remainder-") as folder, quiet_modelopt() as log:
        path = Path(folder) / "model.qdq.onnx"
        onnx.save(model, str(path))
        try:
            return convert_to_mixed_precision(
                onnx_path=str(path),
                low_precision_type=high_precision,
                keep_io_types=True,
                nodes_to_exclude=keep or None,
                op_types_to_exclude=list(FP16_FP32_OPS),
                providers=["cpu"],
            )
        except Exception as exc:  # ModelOpt raises many types on graphs it cannot convert
            raise modelopt_error(f"{high_precision.upper()} conversion of the INT8 remainder", exc, log)


def ceiling(fp32: onnx.ModelProto, high_precision: str) -> onnx.ModelProto:
    """The INT8 model with every Q/DQ removed and the remainder as built: the FP32 model ModelOpt was given,
    converted as ``build`` converts a remainder."""
    return build(fp32, high_precision)
