"""Which compute nodes (Conv, ConvTranspose, MatMul, Gemm) stay out of INT8, and why.

A node is out of INT8 when its input and weight do not both come through DequantizeLinear. The
reasons, first that applies: the user's --exclude-node / --exclude-op, the accuracy budget, a
TensorRT fusion rule (``fusion.py``), ModelOpt's Conv rule (fewer than 16 input or output channels
that its INT8 kernels do not cover), and otherwise ModelOpt's placement (e.g. a MatMul with M or N
of 1, or the graph's last layer).
"""

from __future__ import annotations

import onnx

from pipeline.quantize.graph import MAC_OPS, int8_share
from pipeline.quantize.modelopt_log import quiet_modelopt

PLACEMENT = "ModelOpt's Q/DQ placement left it unquantized (GEMV MatMul, output layer or pattern)"


def coverage(
    model: onnx.ModelProto, fp32: onnx.ModelProto, macs: dict[str, int] | None, reasons: dict[str, str]
) -> dict:
    """The INT8 share of MACs and each compute node out of INT8 with its MACs and why (largest first)."""
    inside = _int8_nodes(model, macs)
    rules = {**_activation_products(fp32), **_modelopt_conv_rule(fp32)}
    out = [
        {
            "node": node.name,
            "op_type": node.op_type,
            "macs": (macs or {}).get(node.name),
            "why": reasons.get(node.name) or rules.get(node.name) or PLACEMENT,
        }
        for node in fp32.graph.node
        if node.op_type in MAC_OPS and node.name and node.name not in inside
    ]
    out.sort(key=lambda row: -(row["macs"] or 0))
    share = int8_share(model, macs) if macs else None
    return {**(share or {}), "out_of_int8": out}


def _int8_nodes(model: onnx.ModelProto, macs: dict[str, int] | None) -> set[str]:
    """The compute nodes ``int8_share`` counts as INT8 (one MAC each where MACs are unknown)."""
    names = [node.name for node in model.graph.node if node.op_type in MAC_OPS and node.name]
    return {name for name in names if int8_share(model, {name: (macs or {}).get(name) or 1})["int8"]}


def _activation_products(fp32: onnx.ModelProto) -> dict[str, str]:
    """MatMuls of two activations (attention's Q.K^T and weights.V): ModelOpt quantizes them only in its MHA patterns."""
    constants = {init.name for init in fp32.graph.initializer} | {
        out for node in fp32.graph.node if node.op_type == "Constant" for out in node.output
    }
    return {
        node.name: "MatMul of two activations (attention product), outside ModelOpt's MHA patterns"
        for node in fp32.graph.node
        if node.op_type == "MatMul" and not any(name in constants for name in node.input)
    }


def _modelopt_conv_rule(fp32: onnx.ModelProto) -> dict[str, str]:
    """The Convs ModelOpt's INT8 rule skips (channel counts its kernels do not cover), from its own function."""
    try:
        import onnx_graphsurgeon as gs
        from modelopt.onnx.quantization.graph_utils import find_nodes_from_convs_to_exclude
    except ImportError:
        return {}
    try:
        with quiet_modelopt():
            names = find_nodes_from_convs_to_exclude(gs.import_onnx(fp32), quantize_mode="int8")
    except Exception:  # a graph its rule cannot read: no reason to give beyond placement
        return {}
    return {
        name: "ModelOpt's INT8 Conv rule (fewer than 16 channels in or out, not a supported shape)" for name in names
    }
