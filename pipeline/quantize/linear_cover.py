"""Linear layers that ModelOpt's Q/DQ placement leaves unquantized, quantized as TensorRT runs them.

ModelOpt's INT8 placement partitions the graph around LayerNorm and the heads of fusible patterns,
and leaves some MatMuls with a constant weight out of INT8 for no accuracy reason: on PP-OCRv4's
recognizer, the classifier (a 120 x 6625 MatMul, 4.5% of the MACs) and the second transformer
block's MLP, while the first block's identical MLP is quantized. Each such MatMul (a constant K x N
weight with K and N of at least 16, the smallest TensorRT's INT8 GEMMs serve, and more than one row
per sample: ModelOpt leaves a GEMV out on purpose) gets Q/DQ on its activation input, per tensor
at the range the chosen method gives it, and on its weight, symmetric per output column: a MatMul
TensorRT runs in INT8, in the format of the MatMuls ModelOpt does quantize. Nodes excluded by name
(the user's, TensorRT's fusions, the accuracy budget's) stay as they are.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from pipeline.quantize.ranges import LEVELS

MIN_DIM = 16  # K and N below this: ModelOpt's small-GEMM rule leaves the MatMul out for TensorRT's speed
WHY = "quantized by edgepipe: a MatMul ModelOpt's placement left out (constant weight, K and N >= 16)"


def cover_linear_layers(
    model: onnx.ModelProto, amaxes: dict[str, float], excluded: set[str], macs: dict[str, int] | None
) -> tuple[onnx.ModelProto, list[str]]:
    """``model`` with Q/DQ added to every MatMul ModelOpt left out that TensorRT would run in INT8 (see the module's
    docstring), and their names. ``amaxes``: activation ranges by tensor; ``macs``: MACs per node for one sample."""
    values = {init.name: init for init in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    covered, ordered = [], []
    for node in list(model.graph.node):
        ordered.append(node)
        weight = values.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if weight is None or len(weight.dims) != 2 or node.name in excluded or node.input[0] not in amaxes:
            continue
        source = node.input[0]
        rows, columns = weight.dims
        producer = producers.get(source)
        if min(rows, columns) < MIN_DIM or (producer is not None and producer.op_type == "DequantizeLinear"):
            continue
        if not macs or macs.get(node.name, 0) <= rows * columns:  # one row per sample (a GEMV) or unknown
            continue
        w = numpy_helper.to_array(weight).astype(np.float32)
        scales = (np.maximum(np.abs(w).max(axis=0), 1e-12) / (LEVELS - 1)).astype(np.float32)
        activation = np.float32(max(amaxes[source], 1e-12) / (LEVELS - 1))
        pairs = [_qdq(model, node, 0, activation, None), _qdq(model, node, 1, scales, 1)]
        ordered[-1:] = [made for pair in pairs for made in pair] + [node]
        covered.append(node.name)
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    return model, covered


def _qdq(model: onnx.ModelProto, node: onnx.NodeProto, index: int, scale, axis: int | None) -> list[onnx.NodeProto]:
    """A QuantizeLinear/DequantizeLinear pair (INT8, zero point 0) that ``node``'s input ``index`` now reads through."""
    tensor = node.input[index]
    prefix = f"{node.name}/{tensor}"
    zero = np.zeros(np.shape(scale), np.int8)
    model.graph.initializer.extend(
        [numpy_helper.from_array(np.asarray(scale), f"{prefix}/scale"), numpy_helper.from_array(zero, f"{prefix}/zero")]
    )
    attributes = {} if axis is None else {"axis": axis}
    scale_zero = [f"{prefix}/scale", f"{prefix}/zero"]
    node.input[index] = f"{prefix}/dq"
    return [
        onnx.helper.make_node("QuantizeLinear", [tensor, *scale_zero], [f"{prefix}/q"], f"{prefix}/q", **attributes),
        onnx.helper.make_node(
            "DequantizeLinear", [f"{prefix}/q", *scale_zero], [f"{prefix}/dq"], f"{prefix}/dq", **attributes
        ),
    ]
