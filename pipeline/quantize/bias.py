"""Empirical bias correction: INT8 rounding shifts each output channel's mean; the bias takes the shift back.

Rounding weights and activations to 8 bits makes a Conv/Gemm output channel err by a mean that is
not zero (most of all in depthwise convolutions and near-dead channels): every later layer sees
the shifted features. ``correct_bias`` runs the FP32 model on calibration images and measures each quantized Conv/Gemm output channel's own mean error (a Q/DQ copy of the node beside
it in the FP32 model, reading the FP32 model's input: correcting every node's whole error at once
would count what earlier layers add twice, and diverges in deep networks), and subtracts it from
that node's bias (adding a bias where there is none). Only the float bias changes: it stays unquantized, as TensorRT's Q/DQ rules
want it, and no Q/DQ node or scale moves.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from pipeline.onnxinfo import cpu_session
from pipeline.quantize.graph import quantized_nodes
from pipeline.quantize.ranges import expose
from pipeline.quantize.sensitivity import constant, quantized_copy

IMAGES = 64  # calibration images the means are measured on
_CHUNK = 16


def correct_bias(fp32: onnx.ModelProto, qdq: onnx.ModelProto, images: np.ndarray) -> onnx.ModelProto:
    """A copy of ``qdq`` whose quantized Conv/Gemm biases take back each output channel's own mean INT8 error."""
    corrected = onnx.ModelProto()
    corrected.CopyFrom(qdq)
    fp32_outputs = {out for node in fp32.graph.node for out in node.output}
    quantized = set(quantized_nodes(qdq))
    nodes = [
        node
        for node in corrected.graph.node
        if node.op_type in ("Conv", "Gemm") and node.name in quantized and node.output[0] in fp32_outputs
    ]
    probe, pairs = _probe(fp32, qdq, nodes)
    if not pairs:
        return corrected
    means = _channel_means(probe, [name for pair in pairs.values() for name in pair], images[:IMAGES])
    for node in nodes:
        if node.name in pairs:
            reference, own = pairs[node.name]
            _add_to_bias(corrected.graph, node, means[reference] - means[own])
    return corrected


def _probe(fp32: onnx.ModelProto, qdq: onnx.ModelProto, nodes: list[onnx.NodeProto]):
    """The FP32 model with, beside each node, its Q/DQ copy reading the FP32 model's own input: the node's own
    error, free of what earlier layers add (correcting that too would count it twice). Returns the model and, per
    node name, (its FP32 output, its copy's output)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(fp32)
    producers = {out: node for node in qdq.graph.node for out in node.output}
    values = {init.name: numpy_helper.to_array(init) for init in qdq.graph.initializer}
    fp32_tensors = {out for node in fp32.graph.node for out in node.output} | {i.name for i in fp32.graph.input}
    pairs = {}
    for node in nodes:
        inputs = [quantized_copy(probe, name, producers, values, fp32_tensors, node.name) for name in node.input[:2]]
        if None in inputs:
            continue
        if len(node.input) > 2 and node.input[2] in values:
            inputs.append(constant(probe, f"{node.name}/own/bias", values[node.input[2]].astype(np.float32)))
        own = f"{node.name}/own/output"
        copy = onnx.helper.make_node(node.op_type, inputs, [own], name=f"{node.name}/own")
        copy.attribute.extend(node.attribute)
        probe.graph.node.append(copy)
        pairs[node.name] = (node.output[0], own)
    return probe, pairs


def _add_to_bias(graph: onnx.GraphProto, node: onnx.NodeProto, delta: np.ndarray) -> None:
    """Add ``delta`` (one value per output channel) to ``node``'s bias initializer, made if absent or shared."""
    initializers = {init.name: init for init in graph.initializer}
    name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if name in initializers:
        bias = numpy_helper.to_array(initializers[name])
        dtype = bias.dtype
    else:
        bias, dtype = np.zeros(delta.shape, np.float32), _weight_dtype(graph, node, initializers)
    updated = (bias.astype(np.float64) + delta).astype(dtype)
    own = f"{node.name}_bias_corrected"
    if own in initializers:
        initializers[own].CopyFrom(numpy_helper.from_array(updated, own))
    else:
        graph.initializer.append(numpy_helper.from_array(updated, own))
    while len(node.input) < 3:
        node.input.append("")
    node.input[2] = own


def _weight_dtype(graph: onnx.GraphProto, node: onnx.NodeProto, initializers) -> np.dtype:
    """The float type the node computes in: its weight's DequantizeLinear scale type, else float32."""
    producers = {out: n for n in graph.node for out in n.output}
    weight = producers.get(node.input[1])
    if weight is not None and weight.op_type == "DequantizeLinear" and weight.input[1] in initializers:
        return numpy_helper.to_array(initializers[weight.input[1]]).dtype
    return np.dtype(np.float32)


def _channel_means(model: onnx.ModelProto, names: list[str], images: np.ndarray) -> dict[str, np.ndarray]:
    """Mean of each named tensor over every axis but 1 (the channel), on ``images``."""
    exposed, names = expose(model, names)
    session = cpu_session(exposed.SerializeToString(), every_tensor=True)
    feed = session.get_inputs()[0]
    fixed = isinstance(feed.shape[0], int) and feed.shape[0] > 0
    batch = feed.shape[0] if fixed else _CHUNK
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for start in range(0, len(images), batch):
        chunk = np.ascontiguousarray(images[start : start + batch])
        real = len(chunk)
        if fixed and real < batch:
            chunk = np.resize(chunk, (batch, *chunk.shape[1:]))
        for name, value in zip(names, session.run(names, {feed.name: chunk})):
            value = value[:real].astype(np.float64)
            axes = tuple(a for a in range(value.ndim) if a != 1)
            sums[name] = sums.get(name, 0.0) + value.sum(axis=axes)
            counts[name] = counts.get(name, 0) + value.size // value.shape[1]
    return {name: sums[name] / counts[name] for name in names}
