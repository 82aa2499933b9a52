"""Nodes kept out of ModelOpt's Q/DQ placement because TensorRT fuses them with their neighbours.

* Gate ``Mul``: features x gate, where the gate comes from an excluded Sigmoid/HardSigmoid (SE, ECA,
  CBAM) or a Clip (HardSigmoid/HardSwish written out as x * clip(x + 3, 0, 6) / 6). TensorRT fuses the
  gate into the product; ModelOpt leaves a Sigmoid gate's Mul unquantized but puts Q/DQ on a
  HardSigmoid or Clip gate's, which rounds the gated features once more for nothing.
* ``HardSwish``: TensorRT fuses it into the Conv before it; Q/DQ on its input rounds every conv
  output twice (once there, once before the next Conv).

``fusion_exclusions`` names each such node with the rule, for ``nodes_to_exclude`` and the coverage record.
"""

from __future__ import annotations

import onnx

GATE_OPS = ("Sigmoid", "HardSigmoid")
DECOMPOSED_GATE_OPS = ("Clip",)  # hard-sigmoid written out: clip(x + 3, 0, 6) [/ 6]
FUSED_ACTIVATIONS = ("HardSwish",)


def fusion_exclusions(model: onnx.ModelProto, excluded_ops: list[str]) -> dict[str, str]:
    """Node name -> the TensorRT fusion rule that keeps its inputs unquantized."""
    producers = {out: node for node in model.graph.node for out in node.output}
    gates = {op for op in GATE_OPS if op in excluded_ops} | set(DECOMPOSED_GATE_OPS)
    why: dict[str, str] = {}
    for node in model.graph.node:
        if not node.name:
            continue
        if node.op_type == "Mul":
            gate = next((producers[i] for i in node.input if i in producers and producers[i].op_type in gates), None)
            if gate is not None:
                why[node.name] = f"gate Mul of {gate.op_type} (TensorRT fuses the gate into the product)"
        elif node.op_type in FUSED_ACTIVATIONS:
            why[node.name] = f"{node.op_type} (TensorRT fuses it into the Conv before it: its input is not quantized)"
    return why
