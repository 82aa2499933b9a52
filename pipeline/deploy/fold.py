"""The ONNX graph changes DeepStream needs: mean/std folded into the model, a softmax head for classifiers.

``nvinfer`` feeds a model ``net-scale-factor * (x - offsets[c])`` of 0-255 pixels, with ONE scale
for every channel, so a per-channel std cannot be expressed there. Folding moves the
normalization into the graph: with ``net-scale-factor = 1/255`` and ``offsets = 0`` nvinfer gives
the model ``x / 255`` (ToTensor's output) and the graph's first two nodes compute
``(y - mean) / std`` as ``y * (1/std) + (-mean/std)``, per channel, in FP32. Where the ONNX is
not to be changed, ``approximate`` gives one scale and per-channel offsets and the error it makes.

nvinfer's default classifier parser wants probabilities; edgepipe's classifiers output logits, so
``with_softmax`` appends a Softmax over the classes (unless the graph already ends in one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from pipeline.preprocess import Preprocess

SOFTMAX_OUTPUT = "probabilities"
_INPUT_SUFFIX = "_normalized"


def fold_normalization(model: onnx.ModelProto, preprocess: Preprocess) -> onnx.ModelProto:
    """A copy of ``model`` taking ``x / 255`` (ToTensor's [0, 1] pixels) and normalizing it inside the graph."""
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    if preprocess.mean is None and preprocess.std is None:
        return folded  # ToTensor alone: nvinfer's 1/255 is already exact
    graph = folded.graph
    initializers = {init.name for init in graph.initializer}
    image = next(value for value in graph.input if value.name not in initializers)
    name, inner = image.name, image.name + _INPUT_SUFFIX
    for node in graph.node:
        node.input[:] = [inner if value == name else value for value in node.input]
    channels = preprocess.channels
    shape = (1, channels, 1, 1) if preprocess.layout == "nchw" else (1, 1, 1, channels)
    mean = np.asarray(preprocess.mean or (0.0,) * channels, dtype=np.float64)
    std = np.asarray(preprocess.std or (1.0,) * channels, dtype=np.float64)
    dtype = helper.tensor_dtype_to_np_dtype(image.type.tensor_type.elem_type)  # FP32, or FP16 for an FP16-input model
    scale = numpy_helper.from_array((1.0 / std).astype(dtype).reshape(shape), name + "_fold_scale")
    bias = numpy_helper.from_array((-mean / std).astype(dtype).reshape(shape), name + "_fold_bias")
    graph.initializer.extend([scale, bias])
    nodes = [
        helper.make_node("Mul", [name, scale.name], [name + "_scaled"], name=name + "_fold_mul"),
        helper.make_node("Add", [name + "_scaled", bias.name], [inner], name=name + "_fold_add"),
    ]
    for position, node in enumerate(nodes):
        graph.node.insert(position, node)
    return folded


def ends_in_softmax(model: onnx.ModelProto) -> bool:
    output = model.graph.output[0].name
    return any(node.op_type == "Softmax" and output in node.output for node in model.graph.node)


def with_softmax(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a classifier ``model`` whose single output is the softmax of its logits, named ``probabilities``."""
    headed = onnx.ModelProto()
    headed.CopyFrom(model)
    if ends_in_softmax(model):
        return headed
    graph = headed.graph
    logits = graph.output[0]
    graph.node.append(helper.make_node("Softmax", [logits.name], [SOFTMAX_OUTPUT], axis=-1, name="edgepipe_softmax"))
    probabilities = onnx.ValueInfoProto()
    probabilities.CopyFrom(logits)
    probabilities.name = SOFTMAX_OUTPUT
    del graph.output[:]
    graph.output.append(probabilities)
    return headed


@dataclass(frozen=True)
class NvinferScaling:
    """``net-scale-factor`` and ``offsets`` for nvinfer, and what they cost against the model's own preprocessing."""

    net_scale_factor: float
    offsets: tuple[float, ...]
    folded: bool
    max_scale_error: float  # the largest relative error of the one scale against a channel's 1/(255*std)

    def note(self) -> str:
        if self.folded:
            return "mean/std are folded into the ONNX: net-scale-factor 1/255 and offsets 0 are exact"
        if self.max_scale_error == 0:
            return "one scale and per-channel offsets express this preprocessing exactly"
        return (
            f"nvinfer has one scale for all channels: the model's per-channel std is approximated by their mean, "
            f"up to {100 * self.max_scale_error:.2f}% off on a channel's normalized values"
        )


def scaling(preprocess: Preprocess, folded: bool) -> NvinferScaling:
    """nvinfer's scaling for a folded model (1/255, 0), or the closest one scale for an unfolded one."""
    channels = preprocess.channels
    if folded or (preprocess.mean is None and preprocess.std is None):
        return NvinferScaling(1 / 255, (0.0,) * channels, folded, 0.0)
    mean = np.asarray(preprocess.mean or (0.0,) * channels, dtype=np.float64)
    std = np.asarray(preprocess.std or (1.0,) * channels, dtype=np.float64)
    one = float(std.mean())
    error = float(np.max(np.abs(std / one - 1.0)))  # nvinfer / exact = std_c / one
    return NvinferScaling(1 / (255 * one), tuple(float(v) for v in 255 * mean), False, error)
