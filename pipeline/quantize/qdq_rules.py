"""The TensorRT ONNX parser's rules for Q/DQ graphs, checked before a model is written.

A graph that breaks one would fail much later, in ``edgepipe build-engine``, with the parser's
terse message; here the error names the node and the rule.
"""

from __future__ import annotations

import numpy as np
import onnx

from pipeline.errors import EdgepipeError
from pipeline.onnxinfo import MIN_QDQ_OPSET
from pipeline.precision import QDQ_OPS

MIN_OPSET = MIN_QDQ_OPSET
_FIX = "quantize the FP32 model with 'edgepipe quantize --int8' (symmetric, per-channel weights only)"


def check_tensorrt_qdq_rules(model: onnx.ModelProto) -> None:
    """Raise EdgepipeError naming the node when ``model`` breaks a rule of the TensorRT ONNX parser.

    The rules: opset >= 13; every Q/DQ zero point is a constant 0 (TensorRT quantizes
    symmetrically); no quantized bias (an INT32 DequantizeLinear, or any DequantizeLinear feeding
    a Conv/Gemm bias); per-channel (1-D) scales only on constant weights, along the weight's
    output-channel axis: 0 for Conv and Gemm with transB=1, 1 for ConvTranspose, Gemm with
    transB=0 and MatMul (whose constant weight is K x N).
    """
    opset = _default_opset(model)
    if opset < MIN_OPSET:
        raise EdgepipeError(
            f"the model uses ONNX opset {opset}; TensorRT needs >= {MIN_OPSET} for Q/DQ",
            fix="export it again with --opset 13 or later",
        )
    constants = _constants(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, index))
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        label = f"{node.op_type} node {node.name or node.output[0]!r}"
        if len(node.input) > 2 and node.input[2]:
            zero_point = constants.get(node.input[2])
            if zero_point is None:
                raise EdgepipeError(
                    f"{label} has a zero point that is not a constant; TensorRT needs zero point 0", fix=_FIX
                )
            if np.any(zero_point != 0):
                raise EdgepipeError(
                    f"{label} has a non-zero zero point; TensorRT only takes symmetric quantization (zero point 0)",
                    fix=_FIX,
                )
        if node.op_type == "DequantizeLinear":
            x = constants.get(node.input[0])
            if x is not None and x.dtype == np.int32:
                raise EdgepipeError(
                    f"{label} dequantizes an INT32 tensor (a quantized bias); the TensorRT ONNX parser rejects it",
                    fix="keep biases in float: " + _FIX,
                )
            for consumer, index in consumers.get(node.output[0], []):
                if consumer.op_type in ("Conv", "ConvTranspose", "Gemm") and index == 2:
                    raise EdgepipeError(
                        f"{label} feeds the bias of {consumer.op_type} node {consumer.name!r}; TensorRT takes no quantized bias",
                        fix="keep biases in float: " + _FIX,
                    )
        scale = constants.get(node.input[1])
        if scale is None:
            raise EdgepipeError(
                f"{label} has a scale that is not a constant; TensorRT needs build-time scales", fix=_FIX
            )
        if scale.size > 1 or scale.ndim > 0 and scale.ndim != 1:
            _check_per_channel(node, label, scale, constants, producers, consumers)


def _check_per_channel(node, label, scale, constants, producers, consumers) -> None:
    """A per-channel scale is only allowed on a constant weight, along its output-channel axis."""
    if scale.ndim != 1:
        raise EdgepipeError(
            f"{label} has a {scale.ndim}-D scale; TensorRT takes a scalar or a 1-D per-channel scale for INT8", fix=_FIX
        )
    weight = _weight_behind(node, constants, producers)
    if weight is None:
        raise EdgepipeError(
            f"{label} quantizes an activation per channel; TensorRT allows per-channel scales only for weights",
            fix=_FIX,
        )
    axis = _attr(node, "axis")
    axis = 1 if axis is None else axis
    axis = axis + weight.ndim if axis < 0 else axis
    dq_output = node.output[0] if node.op_type == "DequantizeLinear" else _dq_after(node, consumers)
    for consumer, index in consumers.get(dq_output, []) if dq_output else []:
        expected = _weight_axis(consumer, index, weight.ndim)
        if expected is not None and axis != expected:
            raise EdgepipeError(
                f"{label} quantizes the weight of {consumer.op_type} node {consumer.name!r} along axis {axis}; TensorRT needs its output-channel axis {expected}",
                fix=_FIX,
            )


def _weight_axis(consumer: onnx.NodeProto, index: int, rank: int) -> int | None:
    """The output-channel axis of the weight ``consumer`` takes at input ``index``."""
    if consumer.op_type == "Conv" and index == 1:
        return 0
    if consumer.op_type == "ConvTranspose" and index == 1:
        return 1
    if consumer.op_type == "Gemm" and index == 1:
        return 0 if _attr(consumer, "transB") else 1
    if consumer.op_type == "MatMul" and index == 1:
        return rank - 1
    return None


def _weight_behind(node, constants, producers) -> np.ndarray | None:
    """The constant a Q or DQ node quantizes, looking through a Q in front of a DQ."""
    source = node.input[0]
    if source in constants:
        return constants[source]
    producer = producers.get(source)
    if node.op_type == "DequantizeLinear" and producer is not None and producer.op_type == "QuantizeLinear":
        return constants.get(producer.input[0])
    return None


def _dq_after(q_node, consumers) -> str | None:
    for consumer, _ in consumers.get(q_node.output[0], []):
        if consumer.op_type == "DequantizeLinear":
            return consumer.output[0]
    return None


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and _attr(node, "value") is not None:
            values[node.output[0]] = onnx.numpy_helper.to_array(_attr(node, "value"))
    return values


def _attr(node: onnx.NodeProto, name: str):
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return None


def _default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 0
