"""The high-precision remainder of an INT8 model: what is not quantized, in FP16 with --fp16's block list, or FP32.

ModelOpt's INT8 path converts every op it does not quantize to FP16 with no block list: LayerNorm,
Softmax, reductions, Pow, and the Q/DQ scales themselves. Here ModelOpt quantizes with an FP32
remainder, and the remainder is converted the way ``--fp16`` converts a model (ModelOpt AutoCast,
``FP16_FP32_OPS`` kept FP32), with the Q/DQ nodes whose scale would underflow FP16 (below its
smallest normal number, 6.1e-5: a near-dead depthwise channel's 1.8e-7 is a subnormal) kept FP32 too.

A quantized Conv/Gemm whose bias would overflow FP16 once quantized stays FP32 whole, with the Q/DQ
nodes of its two inputs and the Q nodes reading its output (``overflowing_bias``). ONNX Runtime
quantizes the float bias of a Conv/Gemm read through DequantizeLinear (its BiasQuantization pass) as
round(bias / (input scale x weight scale)), computed in the scales' type. In FP16 an image's input
scale (1/127) times a small weight scale gives 1e-7..1e-5, the quotient passes 65504 and the bias
becomes inf: the PP-OCRv4 recognizer's stem Conv took its INT8 agreement from 94 to 78%. Kept FP32, the
INT32 bias is computed in FP32; TensorRT, which takes the bias only in float, runs the unit in INT8 either
way.

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
FP16_MAX = 65504.0
# An INT32 bias within this factor of FP16's largest value is kept FP32 too: bias correction (``bias.py``)
# moves the bias after the remainder is built.
BIAS_HEADROOM = 2.0


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


def overflowing_bias(model: onnx.ModelProto) -> list[str]:
    """Quantized Conv/Gemm nodes whose bias / (input scale x weight scale), in FP16, comes within ``BIAS_HEADROOM``
    of FP16's largest value; each with the Q/DQ nodes of its inputs and the Q nodes reading its output."""
    values = {init.name: init for init in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    names = []
    for node in model.graph.node:
        dqs = [producers.get(name) for name in node.input[:2]]
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or node.input[2] not in values:
            continue
        if len(dqs) < 2 or not all(dq is not None and dq.op_type == "DequantizeLinear" for dq in dqs):
            continue
        if not all(dq.input[1] in values for dq in dqs) or not _bias_overflows(node, dqs, values):
            continue
        quantizers = [producers.get(dq.input[0]) for dq in dqs]
        outputs = [reader for reader in readers.get(node.output[0], []) if reader.op_type == "QuantizeLinear"]
        unit = [node, *dqs, *(q for q in quantizers if q is not None and q.op_type == "QuantizeLinear"), *outputs]
        names += [member.name for member in unit if member.name]
    return list(dict.fromkeys(names))


def _bias_overflows(node: onnx.NodeProto, dqs: list[onnx.NodeProto], values: dict) -> bool:
    """Whether ``node``'s INT32 bias, computed in FP16 as ONNX Runtime computes it, nears FP16's largest value."""
    bias = np.abs(onnx.numpy_helper.to_array(values[node.input[2]]).astype(np.float16).astype(np.float64))
    input_scale, weight_scale = (onnx.numpy_helper.to_array(values[dq.input[1]]).astype(np.float16) for dq in dqs)
    scale = (input_scale.astype(np.float32) * weight_scale.astype(np.float32)).astype(np.float16).astype(np.float64)
    if scale.size not in (1, bias.size):
        return False
    if np.any(scale.reshape(-1) == 0):
        return True
    return bool(np.max(bias / scale.reshape(-1), initial=0.0) * BIAS_HEADROOM >= FP16_MAX)


def build(model: onnx.ModelProto, high_precision: str) -> onnx.ModelProto:
    """``model`` (Q/DQ, every other op FP32) with its remainder in ``high_precision`` (fp32: as it is)."""
    if high_precision == "fp32":
        return model
    from modelopt.onnx.autocast import convert_to_mixed_precision  # ModelOpt takes seconds to import

    keep = [f"^{re.escape(name)}$" for name in dict.fromkeys(underflowing_qdq(model) + overflowing_bias(model))]
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
