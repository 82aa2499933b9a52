"""What runs in INT8 in a Q/DQ model, how much of the work that is, and taking nodes back out of it.

* ``count_macs``: multiply-accumulates of every Conv, ConvTranspose, MatMul and Gemm of the FP32
  model for one sample at a fixed input shape, from onnx shape inference (and, for the nodes whose
  shapes it cannot follow, such as a MatMul behind a Reshape computed from Shape ops, from one
  ONNX Runtime run on zeros).
* ``quantized_nodes`` / ``int8_share``: a compute node runs in INT8 when its data inputs (input and
  weight) both come through DequantizeLinear (a DequantizeLinear kept FP32 reaches an FP16 node
  through a Cast); the share is those nodes' MACs over all MACs.
* ``keep_in_high_precision``: the Q/DQ model with the named nodes fed their unquantized inputs
  again, so they run in the model's higher precision. The calibrated scales of every other node
  stay as they are, so the accuracy budget search tries each candidate without calibrating again.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx

from pipeline.errors import EdgepipeError
from pipeline.onnxinfo import cpu_session
from pipeline.precision import QDQ_OPS

MAC_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
# Ops that pass values through unchanged, only rearrange them or read their shape: quantizing their
# input changes no value they compute, so the budget search does not rank or keep them.
PASS_THROUGH_OPS = set(QDQ_OPS) | {
    "Cast",
    "Constant",
    "Identity",
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Transpose",
    "Shape",
    "Size",
}


def count_macs(model: onnx.ModelProto, input_shape: tuple[int, ...]) -> dict[str, int]:
    """MACs of each Conv/ConvTranspose/MatMul/Gemm node (by name) for one input of ``input_shape``.

    ``input_shape`` is the full input shape, batch included (use batch 1). Shapes that inference cannot
    tell are measured by one ONNX Runtime run on zeros (single-input models); nodes still unknown are left out.
    """
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    initializers = {init.name for init in fixed.graph.initializer}
    image = next(i for i in fixed.graph.input if i.name not in initializers)
    for dim, size in zip(image.type.tensor_type.shape.dim, input_shape):
        dim.Clear()
        dim.dim_value = int(size)
    del fixed.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    except Exception as exc:  # inference raises on graphs it cannot follow (custom ops)
        raise EdgepipeError(
            f"onnx shape inference cannot follow the model ({str(exc).splitlines()[0][:160]})",
            fix="check the model with onnx.checker; edgepipe counts MACs from inferred shapes",
        ) from None
    shapes = {
        v.name: _static_shape(v) for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    }
    shapes.update({init.name: tuple(init.dims) for init in inferred.graph.initializer})
    counted = [node for node in inferred.graph.node if node.op_type in MAC_OPS and node.name]
    unknown = [name for node in counted for name in (*node.input[:2], node.output[0]) if shapes.get(name) is None]
    if unknown:
        shapes.update(_measured_shapes(fixed, image, unknown))
    macs = {}
    for node in counted:
        value = _node_macs(node, shapes)
        if value is not None:
            macs[node.name] = value
    return macs


def _measured_shapes(model: onnx.ModelProto, image: onnx.ValueInfoProto, names: list[str]) -> dict[str, tuple]:
    """The shapes of tensors ``names`` in one ONNX Runtime run of ``model`` on zeros (empty where it cannot run)."""
    initializers = {init.name for init in model.graph.initializer}
    if len([i for i in model.graph.input if i.name not in initializers]) != 1:
        return {}
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {o.name for o in exposed.graph.output}
    wanted = list(dict.fromkeys(n for n in names if n and n not in initializers))
    exposed.graph.output.extend(onnx.ValueInfoProto(name=n) for n in wanted if n not in present)
    dims = tuple(d.dim_value for d in image.type.tensor_type.shape.dim)
    zeros = np.zeros(dims, onnx.helper.tensor_dtype_to_np_dtype(image.type.tensor_type.elem_type))
    try:
        values = cpu_session(exposed.SerializeToString(), every_tensor=True).run(wanted, {image.name: zeros})
    except Exception:  # ORT raises its own types for graphs it cannot run: the nodes stay uncounted
        return {}
    return {name: tuple(value.shape) for name, value in zip(wanted, values)}


def quantized_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the compute nodes that read a DequantizeLinear output (they compute on quantized values)."""
    producers = _producers(model)
    return [
        node.name
        for node in model.graph.node
        if node.name
        and node.op_type not in PASS_THROUGH_OPS
        and any(_is_dq(producers.get(name)) for name in node.input)
    ]


def int8_share(model: onnx.ModelProto, macs: dict[str, int]) -> dict[str, float | int]:
    """MACs in INT8 (Conv/MatMul/Gemm with both data inputs through DequantizeLinear) over all MACs."""
    producers = _producers(model)
    int8 = sum(
        macs.get(node.name, 0)
        for node in model.graph.node
        if node.op_type in MAC_OPS
        and len(node.input) >= 2
        and all(_is_dq(_behind_cast(producers, name)) for name in node.input[:2])
    )
    total = sum(macs.values())
    return {"total": int(total), "int8": int(int8), "int8_share": round(100.0 * int8 / total, 2) if total else 0.0}


def keep_in_high_precision(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of the Q/DQ ``model`` in which the named nodes read their inputs before quantization.

    Each input of a named node that comes from QuantizeLinear -> DequantizeLinear is rewired to
    the QuantizeLinear's input (same dtype: Q takes its scale's type, DQ gives it back); Q/DQ
    pairs that nothing reads any more are removed. Other nodes keep their Q/DQ and scales.
    """
    kept = onnx.ModelProto()
    kept.CopyFrom(model)
    wanted = set(names)
    producers = _producers(kept)
    found = set()
    for node in kept.graph.node:
        if node.name not in wanted:
            continue
        found.add(node.name)
        for index, name in enumerate(node.input):
            dq = producers.get(name)
            q = producers.get(dq.input[0]) if _is_dq(dq) else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[index] = q.input[0]
    missing = sorted(wanted - found)
    if missing:
        raise EdgepipeError(
            f"the quantized model has no node named {', '.join(missing[:5])}",
            fix="name nodes of the FP32 model's graph",
        )
    _remove_unused(kept)
    return kept


# --- helpers ---------------------------------------------------------------------------------------------


def _node_macs(node: onnx.NodeProto, shapes: dict[str, tuple | None]) -> int | None:
    out = shapes.get(node.output[0])
    a = shapes.get(node.input[0])
    b = shapes.get(node.input[1]) if len(node.input) > 1 else None
    if out is None or a is None or b is None:
        return None
    if node.op_type == "Conv":  # every output element sums C_in/groups x kernel products
        return int(np.prod(out)) * int(np.prod(b[1:]))
    if node.op_type == "ConvTranspose":  # every input element scatters into C_out/groups x kernel outputs
        return int(np.prod(a)) * int(np.prod(b[1:]))
    if node.op_type == "Gemm":
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        return int(np.prod(out)) * int(a[0] if trans_a else a[-1])
    return int(np.prod(out)) * int(a[-1]) if len(a) else None  # MatMul: K is A's last dimension


def _static_shape(value: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
    return None if any(d < 0 for d in dims) else dims


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def _behind_cast(producers: dict[str, onnx.NodeProto], name: str) -> onnx.NodeProto | None:
    """The node behind ``name``, looking through a Cast (an FP32-kept DequantizeLinear feeding an FP16 node)."""
    node = producers.get(name)
    return producers.get(node.input[0]) if node is not None and node.op_type == "Cast" else node


def _is_dq(node: onnx.NodeProto | None) -> bool:
    return node is not None and node.op_type == "DequantizeLinear"


def _remove_unused(model: onnx.ModelProto) -> None:
    """Drop nodes none of whose outputs are read (from the end back), then unread initializers."""
    outputs = {o.name for o in model.graph.output}
    while True:
        read = {name for node in model.graph.node for name in node.input} | outputs
        dead = [node for node in model.graph.node if not any(out in read for out in node.output)]
        if not dead:
            break
        for node in dead:
            model.graph.node.remove(node)
    read = {name for node in model.graph.node for name in node.input} | outputs
    for init in [init for init in model.graph.initializer if init.name not in read]:
        model.graph.initializer.remove(init)
