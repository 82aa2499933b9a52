"""What ModelOpt's INT8 PTQ is given: refused inputs, and the graph cleaned up so that every convolution is reached.

* ``check_names``: op types and node names the flags give must be the model's.
* ``check_quantizable``: a model already quantized (integer ops, ONNX Runtime's com.microsoft ops)
  or with control flow (Loop, If, Scan) is refused in one line before ModelOpt runs.
* ``clean_up``: onnxslim folds Identity nodes, BatchNormalization into the Conv before it, and
  constant subgraphs. ModelOpt places Q/DQ by patterns (Conv -> activation ...): a BatchNormalization or
  Identity between them hides the pattern and leaves the Conv in FP16/FP32 (an exported PP-LCNet kept
  whole blocks out of INT8 that way). The clean-up is proven unchanged on the calibration images.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from pipeline.errors import EdgepipeError
from pipeline.fidelity import relative_change
from pipeline.onnxinfo import run_onnxruntime

QUANTIZED_OPS = ("ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "DynamicQuantizeLinear")
CONTROL_FLOW_OPS = ("Loop", "If", "Scan")
CLEAN_UP_TOLERANCE = 1e-3  # largest relative output change the clean-up may make (BatchNorm folding rounds)


def check_quantizable(model: onnx.ModelProto) -> None:
    """Refuse, in one line, a model ModelOpt's INT8 PTQ cannot take: already quantized, or with control flow."""
    quantized = sorted(
        {n.op_type for n in model.graph.node if n.op_type in QUANTIZED_OPS or n.domain == "com.microsoft"}
    )
    if quantized:
        raise EdgepipeError(
            f"the model is already quantized (it has {', '.join(quantized)})",
            fix="pass the FP32 model it was made from; edgepipe quantizes FP32 ONNX only",
        )
    flow = [n for n in model.graph.node if n.op_type in CONTROL_FLOW_OPS]
    if flow:
        where = ", ".join(f"{n.op_type} node {n.name or n.output[0]!r}" for n in flow[:3])
        raise EdgepipeError(
            f"the model has control flow ModelOpt's INT8 PTQ cannot convert ({where})",
            fix="export it again with fixed shapes and no data-dependent branches or loops (torch.onnx.export of "
            "the traced module, or onnxslim / onnxsim to fold the If/Loop), or use --fp16",
        )


def clean_up(model: onnx.ModelProto, inputs: np.ndarray) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The model with Identity, BatchNormalization and constant subgraphs folded, proven on ``inputs``.

    Returns the model ModelOpt should quantize and what was folded. Where onnxslim fails or the
    folded model differs, the model is returned as it was and the record says why.
    """
    import onnxslim  # a second to import: only INT8 conversions pay for it

    before = _op_counts(model)
    try:
        slimmed = onnxslim.slim(model)
    except Exception as exc:  # onnxslim raises many types on graphs it cannot follow
        return model, {"applied": False, "why": f"onnxslim failed: {str(exc).splitlines()[0][:160]}"}
    if slimmed is None:
        return model, {"applied": False, "why": "onnxslim returned no model"}
    slimmed, affine = fold_conv_affine(slimmed)
    worst = _relative_change(model, slimmed, np.ascontiguousarray(inputs))
    if not worst <= CLEAN_UP_TOLERANCE:  # NaN included
        return model, {"applied": False, "why": f"the folded model's outputs moved by {worst:.3g} (relative)"}
    after = _op_counts(slimmed)
    folded = {op: count - after.get(op, 0) for op, count in before.items() if count > after.get(op, 0)}
    if affine:
        folded["Mul/Add into Conv"] = affine
    return slimmed, {"applied": True, "folded": folded, "relative_change": float(f"{worst:.3g}")}


def _relative_change(model: onnx.ModelProto, other: onnx.ModelProto, inputs: np.ndarray) -> float:
    """The largest change of any output, relative to that output's largest magnitude."""
    return relative_change(run_onnxruntime(model, inputs), run_onnxruntime(other, inputs))


def _op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def fold_conv_affine(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Fold a constant per-channel (or scalar) ``Mul`` / bias ``Add`` that follows a Conv into its weight and bias.

    A separate bias Add or scale Mul (PaddlePaddle's exports, learnable affine blocks) sits between the
    Conv and its activation, so ModelOpt's patterns do not see Conv -> activation. Returns the model and
    how many nodes were folded.
    """
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    graph = folded.graph
    count = 0
    while (match := _next_affine(graph)) is not None:
        conv, node, value = match
        weight_name, bias_name = conv.input[1], conv.input[2] if len(conv.input) > 2 else ""
        inits = {init.name: init for init in graph.initializer}
        weight = onnx.numpy_helper.to_array(inits[weight_name]).astype(np.float32)
        bias = (
            onnx.numpy_helper.to_array(inits[bias_name]).astype(np.float32)
            if bias_name
            else np.zeros(len(weight), np.float32)
        )
        per_channel = np.broadcast_to(value.reshape(-1), (len(weight),)).astype(np.float32)
        if node.op_type == "Mul":
            weight, bias = weight * per_channel.reshape(-1, *([1] * (weight.ndim - 1))), bias * per_channel
        else:
            bias = bias + per_channel
        _set_initializer(graph, conv, 1, weight, f"{conv.name}.folded_weight")
        _set_initializer(graph, conv, 2, bias, f"{conv.name}.folded_bias")
        for other in graph.node:  # the Conv now gives what the folded node gave
            for index, name in enumerate(other.input):
                if name == node.output[0]:
                    other.input[index] = conv.output[0]
        for output in graph.output:
            if output.name == node.output[0]:
                conv.output[0] = node.output[0]
        graph.node.remove(node)
        count += 1
    used = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    return folded, count


def _next_affine(graph: onnx.GraphProto):
    """A (Conv, Mul or Add, constant) where the Conv's only reader multiplies or adds a per-channel constant."""
    inits = {init.name: init for init in graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    for conv in graph.node:
        if (
            conv.op_type != "Conv"
            or conv.input[1] not in inits
            or (len(conv.input) > 2 and conv.input[2] and conv.input[2] not in inits)
        ):
            continue
        after = readers.get(conv.output[0], [])
        if len(after) != 1 or after[0].op_type not in ("Mul", "Add") or conv.output[0] in outputs:
            continue
        node = after[0]
        other = [name for name in node.input if name != conv.output[0]]
        if len(other) != 1 or other[0] not in inits:
            continue
        value = onnx.numpy_helper.to_array(inits[other[0]])
        if _per_channel(value, inits[conv.input[1]].dims):
            return conv, node, value
    return None


def _per_channel(value: np.ndarray, weight_dims) -> bool:
    """A scalar, or a constant that broadcasts along the Conv output's channel axis only."""
    if value.size == 1:
        return value.ndim <= len(weight_dims)
    if value.ndim > len(weight_dims):
        return False
    shape = (1,) * (len(weight_dims) - value.ndim) + tuple(value.shape)
    return shape[1] == weight_dims[0] and all(d == 1 for i, d in enumerate(shape) if i != 1)


def _set_initializer(graph: onnx.GraphProto, node: onnx.NodeProto, index: int, value: np.ndarray, name: str) -> None:
    """Give ``node`` input ``index`` a new initializer (initializers may be shared, so never changed in place)."""
    names = {init.name for init in graph.initializer}
    while name in names:
        name += "_"
    graph.initializer.append(onnx.numpy_helper.from_array(value.astype(np.float32), name))
    while len(node.input) <= index:
        node.input.append("")
    node.input[index] = name


def check_names(model: onnx.ModelProto, op_types: list[str], nodes: list[str]) -> None:
    """Refuse op types (--exclude-op/--include-op) and node names (--exclude-node) the model does not have."""
    _check_op_types(model, op_types)
    _check_node_names(model, nodes)


def _check_op_types(model: onnx.ModelProto, op_types: list[str]) -> None:
    present = sorted({node.op_type for node in model.graph.node})
    unknown = [op for op in op_types if op not in present]
    if unknown:
        raise EdgepipeError(
            f"the model has no {', '.join(unknown)} op (it has: {', '.join(present)})",
            fix="pass op types from that list to --exclude-op/--include-op",
        )


def _check_node_names(model: onnx.ModelProto, names: list[str]) -> None:
    present = {node.name for node in model.graph.node}
    unknown = [name for name in names if name not in present]
    if unknown:
        example = ", ".join(sorted(n for n in present if n)[:5])
        raise EdgepipeError(
            f"the model has no node named {', '.join(unknown)} (names look like: {example})",
            fix="pass node names from the ONNX graph (e.g. as Netron shows them) to --exclude-node",
        )
