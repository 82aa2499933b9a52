"""SmoothQuant for LayerNorm -> MatMul/Gemm: activation outlier channels moved into the weights, exactly in FP32.

A transformer block's LayerNorm output often has a few channels far larger than the rest; one
per-tensor INT8 scale then leaves the others a handful of levels. SmoothQuant (Xiao et al. 2023)
divides each input channel j of the MatMul by ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` and
multiplies the weight's row j by it: ``X W = (X / s)(s W)``. The division folds into the per-channel
affine that ends the LayerNorm (its gamma and beta), so the graph gains no node.

``find_sites`` finds the tensors this applies to: the output of a ``LayerNormalization`` (1-D scale
on the last axis) or of a constant per-channel ``Mul`` (and ``Add``: a LayerNorm exported as its
ops, as PaddlePaddle and opset < 17 exports write it), read only by ``MatMul``/``Gemm`` nodes as
their data input with a constant 2-D weight. ``smooth`` rewrites them from per-channel maxima
(``ranges.collect(channels=...)`` keeps them in the one calibration pass) and renames nothing but
the rewritten constants, so every tensor keeps its name. ``fidelity.relative_change`` says how far the
rewrite moved the outputs (FP32 rounding only): the caller keeps the original where it moved more.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

ALPHA = 0.5  # migration strength: 0 leaves the activations as they are, 1 moves all their range into the weights
SCALE_LIMITS = (1e-5, 1e5)
TOLERANCE = 1e-3  # largest relative output change the rewrite may make (FP32 rounding of the folded constants)
SUFFIX = "_smoothed"  # the rewritten constants' names: the original's name and this


@dataclass(frozen=True)
class Site:
    """A tensor SmoothQuant rewrites: who writes it (and with which gamma/beta), who reads it (and which weight)."""

    tensor: str
    gamma: tuple[str, str]  # (node, input name) of the per-channel scale
    beta: tuple[str, str] | None  # (node, input name) of the per-channel shift, if any
    readers: tuple[tuple[str, str, int], ...]  # (node, weight name, the weight's input-channel axis)


def find_sites(model: onnx.ModelProto) -> list[Site]:
    """Every LayerNorm (or constant per-channel affine) output that only MatMul/Gemm nodes read, with their weights."""
    graph = model.graph
    constants = _constants(graph)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    producers = {out: node for node in graph.node for out in node.output}
    outputs = {o.name for o in graph.output}
    sites = []
    for node in graph.node:
        affine = _affine(node, constants, readers, producers)
        if affine is None or affine[0] in outputs:
            continue
        tensor, gamma, beta = affine
        width = constants[gamma[1]].size
        weights = [_weight(reader, tensor, constants, width) for reader in readers.get(tensor, [])]
        if weights and None not in weights:
            sites.append(Site(tensor, gamma, beta, tuple(weights)))
    return sites


def smooth(
    model: onnx.ModelProto, sites: list[Site], maxima: dict[str, np.ndarray], alpha: float = ALPHA
) -> tuple[onnx.ModelProto, dict[str, float]]:
    """A copy of ``model`` with each site smoothed by its activations' per-channel ``maxima`` (last axis).

    Returns the model and, per smoothed tensor, the largest ratio between its channels' maxima before
    (how much outlier there was to move).
    """
    smoothed = onnx.ModelProto()
    smoothed.CopyFrom(model)
    graph = smoothed.graph
    constants = _constants(graph)
    nodes = {node.name: node for node in graph.node}
    spread, replaced = {}, set()
    for site in sites:
        x_max = np.asarray(maxima.get(site.tensor, ()), dtype=np.float64).ravel()
        gamma = constants[site.gamma[1]]
        if x_max.size != gamma.size:
            continue
        w_max = np.zeros_like(x_max)
        for _, weight, axis in site.readers:
            w_max = np.maximum(w_max, np.abs(np.moveaxis(constants[weight], axis, 0)).max(axis=1))
        scales = smoothing_scales(x_max, w_max, alpha)
        for node, name in [site.gamma] + ([site.beta] if site.beta else []):
            value = constants[name]
            _replace(graph, nodes[node], name, (value / scales.reshape(value.shape)).astype(value.dtype))
            replaced.add(name)
        for node, weight, axis in site.readers:
            shape = [1] * constants[weight].ndim
            shape[axis] = -1
            value = constants[weight]
            _replace(graph, nodes[node], weight, (value * scales.reshape(shape)).astype(value.dtype))
            replaced.add(weight)
        live = x_max[x_max > 0]
        spread[site.tensor] = float(live.max() / live.min()) if live.size else 1.0
    _drop_unread(graph, replaced)
    return smoothed, spread


def smoothing_scales(x_max: np.ndarray, w_max: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)``, 1 where a channel is all zero, within SCALE_LIMITS."""
    live = (x_max > 0) & (w_max > 0)
    scales = np.ones_like(x_max, dtype=np.float64)
    scales[live] = x_max[live] ** alpha / w_max[live] ** (1.0 - alpha)
    return np.clip(scales, *SCALE_LIMITS)


# --- helpers ---------------------------------------------------------------------------------------------


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Float constants by name: initializers and Constant nodes' values (exporters such as Paddle's use both)."""
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            value = next((a for a in node.attribute if a.name == "value"), None)
            if value is not None:
                values[node.output[0]] = numpy_helper.to_array(value.t)
    return {name: value for name, value in values.items() if value.dtype.kind == "f"}


def _channels(value: np.ndarray | None) -> bool:
    """A per-channel constant on the last axis: shape (C,) or (1, ..., 1, C), C > 1."""
    return value is not None and value.ndim >= 1 and value.shape[-1] > 1 and value.size == value.shape[-1]


def _affine(node: onnx.NodeProto, constants, readers, producers) -> tuple[str, tuple, tuple | None] | None:
    """(output, gamma, beta) where ``node`` ends a per-channel affine: LayerNormalization on the last axis, a
    constant Add after a constant Mul read by nothing else, or a constant Mul that no such Add follows."""
    if node.op_type == "LayerNormalization":
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        gamma = constants.get(node.input[1])
        if axis != -1 or not _channels(gamma) or gamma.ndim != 1 or any(node.output[1:]):
            return None
        beta = (node.name, node.input[2]) if len(node.input) > 2 and node.input[2] in constants else None
        return node.output[0], (node.name, node.input[1]), beta
    scaled = _constant_input(node, constants, "Mul")
    if scaled is not None:
        after = readers.get(node.output[0], [])
        if len(after) == 1 and _constant_input(after[0], constants, "Add") is not None:
            return None  # the Add that follows ends the affine
        return node.output[0], (node.name, scaled), None
    shifted = _constant_input(node, constants, "Add")
    if shifted is None:
        return None
    other = next(i for i in node.input if i != shifted)
    producer = producers.get(other)
    if producer is None or len(readers.get(other, [])) != 1:
        return None
    scaled = _constant_input(producer, constants, "Mul")
    if scaled is None or constants[scaled].size != constants[shifted].size:
        return None
    return node.output[0], (producer.name, scaled), (node.name, shifted)


def _constant_input(node: onnx.NodeProto, constants, op_type: str) -> str | None:
    """The per-channel constant input of a two-input ``op_type`` node whose other input is not constant."""
    if node.op_type != op_type or len(node.input) != 2 or not node.name:
        return None
    first, second = (name in constants for name in node.input)
    if first == second:
        return None
    name = node.input[0] if first else node.input[1]
    return name if _channels(constants[name]) else None


def _weight(reader: onnx.NodeProto, tensor: str, constants, width: int) -> tuple[str, str, int] | None:
    """(node, weight, input-channel axis) where ``reader`` is a MatMul/Gemm reading ``tensor`` as its data input
    with a constant 2-D weight of ``width`` input channels; None otherwise."""
    if reader.op_type not in ("MatMul", "Gemm") or reader.input[0] != tensor or reader.input[1] == tensor:
        return None
    weight = constants.get(reader.input[1])
    if weight is None or weight.ndim != 2 or not reader.name:
        return None
    flags = {a.name: a.i for a in reader.attribute}
    if flags.get("transA", 0):
        return None
    axis = 1 if flags.get("transB", 0) else 0
    return (reader.name, reader.input[1], axis) if weight.shape[axis] == width else None


def _replace(graph: onnx.GraphProto, node: onnx.NodeProto, name: str, value: np.ndarray) -> None:
    """Point ``node``'s input ``name`` at an initializer ``name`` + SUFFIX holding ``value``."""
    own = f"{name}{SUFFIX}"
    tensor = numpy_helper.from_array(np.ascontiguousarray(value), own)
    existing = next((init for init in graph.initializer if init.name == own), None)
    if existing is not None:
        existing.CopyFrom(tensor)
    else:
        graph.initializer.append(tensor)
    for index, current in enumerate(node.input):
        if current == name:
            node.input[index] = own


def _drop_unread(graph: onnx.GraphProto, names: set[str]) -> None:
    """Remove the initializers and Constant nodes of ``names`` that nothing reads any more."""
    read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    unread = names - read
    for init in [init for init in graph.initializer if init.name in unread]:
        graph.initializer.remove(init)
    for node in [n for n in graph.node if n.op_type == "Constant" and n.output[0] in unread]:
        graph.node.remove(node)
