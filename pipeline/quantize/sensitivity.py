"""Which quantized nodes hurt accuracy most: the rankings the INT8 accuracy budget search follows.

* ``rank_alone`` (what the search ranks by): each quantized node's damage to the model's outputs
  when it alone runs as the Q/DQ model has it (its inputs through copies of their Q/DQ, its weight
  and its bias, corrected or not, the Q/DQ model's) and everything else in FP32: the relative L2
  error of the outputs against FP32. Keeping one node out of an otherwise quantized graph says
  little where errors add up over many layers and bias correction has balanced them; a node's own
  damage does not depend on what else is quantized.
* ``rank_sensitive_nodes``: the error each node adds to its own output tensor, inherited error taken off.
* ``without``: the Q/DQ model with the named nodes in FP32 (inputs unquantized, the FP32 model's weights
  and bias), no re-quantization: cheap, for choosing how many ranked nodes a candidate keeps out.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from pipeline.onnxinfo import cpu_session
from pipeline.precision import QDQ_OPS
from pipeline.quantize.graph import PASS_THROUGH_OPS, keep_in_high_precision

# Nodes whose quantization can change a value: compute ops with a DequantizeLinear input.
_NOT_RANKED = PASS_THROUGH_OPS
# Images per ONNX Runtime call: every intermediate tensor of both models is held for a call.
_CHUNK = 16


def rank_sensitive_nodes(
    fp32_model: onnx.ModelProto, int8_model: onnx.ModelProto, images: np.ndarray
) -> list[tuple[str, float]]:
    """Quantized nodes, most harmful first: how much relative error each adds to its output.

    Runs both models on ``images`` (in the model's layout and dtype; a model with a fixed batch
    takes them that many at a time) with ONNX Runtime, every intermediate tensor exposed as an
    output. A node's score is the relative L2 error of its output against the FP32 model's same
    tensor, minus the largest error already present on its inputs, so that error inherited from
    earlier layers is not blamed on later ones.
    """
    fp32_names = {out for node in fp32_model.graph.node for out in node.output}
    producers = {out: node for node in int8_model.graph.node for out in node.output}
    ranked_nodes = _ranked(fp32_model, int8_model)
    if not ranked_nodes:
        return []
    watched = sorted(
        {n.output[0] for n in ranked_nodes}
        | {src for n in ranked_nodes for src in _sources(n, producers) if src in fp32_names}
    )
    reference = _intermediates(fp32_model, watched, images)
    candidate = _intermediates(int8_model, watched, images)
    norms = {
        name: (
            sum(float(np.sum((c - r) ** 2)) for r, c in zip(reference[name], candidate[name])),
            sum(float(np.sum(r**2)) for r in reference[name]),
        )
        for name in reference
        if name in candidate
    }

    def error(name: str) -> float:
        if name not in norms:
            return 0.0
        diff, ref = norms[name]
        return float(np.sqrt(diff) / max(np.sqrt(ref), 1e-12))

    scores = []
    for node in ranked_nodes:
        inherited = max((error(src) for src in _sources(node, producers)), default=0.0)
        scores.append((node.name, error(node.output[0]) - inherited))
    return sorted(scores, key=lambda item: item[1], reverse=True)


def rank_alone(fp32: onnx.ModelProto, qdq: onnx.ModelProto, images: np.ndarray) -> list[tuple[str, float]]:
    """Quantized nodes, most harmful first: the outputs' relative L2 error against FP32 when the node alone is
    quantized (see the module's docstring)."""
    reference = _outputs(fp32, images)
    scores = []
    for node in _ranked(fp32, qdq):
        got = _outputs(alone(fp32, qdq, node.name), images)
        diff = sum(float(np.sum((g.astype(np.float64) - r) ** 2)) for r, g in zip(reference, got))
        scores.append((node.name, float(np.sqrt(diff / max(sum(float(np.sum(r**2)) for r in reference), 1e-24)))))
    return sorted(scores, key=lambda item: item[1], reverse=True)


def alone(fp32: onnx.ModelProto, qdq: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """The FP32 model in which node ``name`` alone reads what it reads in ``qdq``: Q/DQ copies of its activations
    (on the FP32 tensors, at ``qdq``'s scales) and ``qdq``'s constants (weights, bias), in FP32."""
    probe = onnx.ModelProto()
    probe.CopyFrom(fp32)
    producers = {out: node for node in qdq.graph.node for out in node.output}
    values = {init.name: numpy_helper.to_array(init) for init in qdq.graph.initializer}
    fp32_tensors = {out for node in fp32.graph.node for out in node.output} | {i.name for i in fp32.graph.input}
    target = next(node for node in probe.graph.node if node.name == name)
    quantized = next(node for node in qdq.graph.node if node.name == name)
    for index, source in enumerate(quantized.input):
        source = _behind_casts(source, producers)
        copy = quantized_copy(probe, source, producers, values, fp32_tensors, name)
        if copy is None and source in values and values[source].dtype.kind == "f":
            copy = constant(probe, f"{name}/own/{source}", values[source].astype(np.float32))
        if copy is not None and index < len(target.input):
            target.input[index] = copy
    return probe


def without(qdq: onnx.ModelProto, fp32: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """``qdq`` with the named nodes in high precision again: unquantized inputs (``graph.keep_in_high_precision``)
    and the FP32 model's weights and bias (in the type the node computes in), not the corrected or rounded ones."""
    restored = onnx.ModelProto()
    restored.CopyFrom(qdq)
    originals = {node.name: node for node in fp32.graph.node}
    weights = {init.name: numpy_helper.to_array(init) for init in fp32.graph.initializer}
    producers = {out: node for node in restored.graph.node for out in node.output}
    values = {init.name: numpy_helper.to_array(init) for init in restored.graph.initializer}
    wanted = set(names)
    for node in restored.graph.node:
        original = originals.get(node.name) if node.name in wanted else None
        for index, name in enumerate(original.input if original is not None else ()):
            if name in weights and index < len(node.input):
                dtype = _dtype_of(node.input[index], producers, values)
                node.input[index] = constant(
                    restored, f"{name}/fp32/{np.dtype(dtype).name}", weights[name].astype(dtype)
                )
    return keep_in_high_precision(restored, names)


def quantized_copy(probe, name: str, producers, values, fp32_tensors, owner: str) -> str | None:
    """``name`` (a DequantizeLinear output) rebuilt in ``probe`` on FP32 tensors; None where it cannot be."""
    dq = producers.get(name)
    q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
    if q is None or q.op_type != "QuantizeLinear" or q.input[1] not in values:
        return None
    source = _behind_casts(q.input[0], producers)  # the high-precision remainder's casts
    if source in values:
        source = constant(probe, f"{owner}/own/{source}", values[source].astype(np.float32))
    elif source not in fp32_tensors:
        return None
    scale = constant(probe, f"{owner}/own/{q.input[1]}", values[q.input[1]].astype(np.float32))
    point = [constant(probe, f"{owner}/own/{q.input[2]}", values[q.input[2]])] if len(q.input) > 2 else []
    quantized, restored = f"{owner}/own/{name}/q", f"{owner}/own/{name}/dq"
    for op, inputs, output, like in (
        ("QuantizeLinear", [source, scale, *point], quantized, q),
        ("DequantizeLinear", [quantized, scale, *point], restored, dq),
    ):
        made = onnx.helper.make_node(op, inputs, [output], name=output)
        made.attribute.extend(like.attribute)
        probe.graph.node.append(made)
    return restored


def constant(model: onnx.ModelProto, name: str, value: np.ndarray) -> str:
    """``name``, an initializer of ``model`` holding ``value`` (added where absent)."""
    if name not in {init.name for init in model.graph.initializer}:
        model.graph.initializer.append(numpy_helper.from_array(value, name))
    return name


def _ranked(fp32: onnx.ModelProto, qdq: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The nodes of ``qdq`` whose quantization can change a value: named compute nodes with a DequantizeLinear input
    that the FP32 model has too."""
    fp32_names = {out for node in fp32.graph.node for out in node.output}
    producers = {out: node for node in qdq.graph.node for out in node.output}
    return [
        node
        for node in qdq.graph.node
        if node.op_type not in _NOT_RANKED
        and node.name
        and node.output[0] in fp32_names
        and any(
            (p := producers.get(_behind_casts(i, producers))) is not None and p.op_type == "DequantizeLinear"
            for i in node.input
        )
    ]


def _behind_casts(name: str, producers: dict) -> str:
    while name in producers and producers[name].op_type == "Cast":
        name = producers[name].input[0]
    return name


def _dtype_of(name: str, producers, values) -> np.dtype:
    """The float type a node reads ``name`` in: a DequantizeLinear's scale type, a Cast's target, a constant's own."""
    node = producers.get(name)
    if node is not None and node.op_type == "DequantizeLinear" and node.input[1] in values:
        return values[node.input[1]].dtype
    if node is not None and node.op_type == "Cast":
        return onnx.helper.tensor_dtype_to_np_dtype(next(a.i for a in node.attribute if a.name == "to"))
    return values[name].dtype if name in values and values[name].dtype.kind == "f" else np.dtype(np.float32)


def _outputs(model: onnx.ModelProto, images: np.ndarray) -> list[np.ndarray]:
    """Every output of ``model`` on ``images`` (ONNX Runtime CPU, a chunk at a time), as float64 arrays."""
    session = cpu_session(model.SerializeToString())
    feed = session.get_inputs()[0]
    fixed = isinstance(feed.shape[0], int) and feed.shape[0] > 0
    batch = feed.shape[0] if fixed else _CHUNK
    if fixed and len(images) % batch:
        images = np.resize(images, (-(-len(images) // batch) * batch, *images.shape[1:]))
    chunks = [
        session.run(None, {feed.name: np.ascontiguousarray(images[i : i + batch])})
        for i in range(0, len(images), batch)
    ]
    return [np.concatenate([c[k] for c in chunks]).astype(np.float64) for k in range(len(chunks[0]))]


def _sources(node: onnx.NodeProto, producers: dict) -> list[str]:
    """The tensors behind a node's inputs, looking back through Q/DQ and Cast nodes."""
    sources = []
    for name in node.input:
        while name in producers and producers[name].op_type in (*QDQ_OPS, "Cast"):
            name = producers[name].input[0]
        if name in producers:
            sources.append(name)
    return sources


def _intermediates(model: onnx.ModelProto, names: list[str], images: np.ndarray) -> dict[str, list[np.ndarray]]:
    """Run ``model`` with ``names`` added to its outputs; returns the tensors found, as float64 chunks.

    A bare ONNX Runtime session rather than a runner: it needs graph optimizations off, so that
    every watched tensor still exists, and every output, not a classifier's logits.
    """

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(inferred.graph.output)
    }
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    existing = {o.name for o in exposed.graph.output}
    added = [n for n in names if n in types and n not in existing and types[n]]
    for name in added:
        exposed.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None))
    session = every_tensor_session(exposed)
    feed = session.get_inputs()[0]
    fixed = isinstance(feed.shape[0], int) and feed.shape[0] > 0
    batch = feed.shape[0] if fixed else _CHUNK
    if fixed and len(images) % batch:  # whole batches only: repeat images to fill the last
        images = np.resize(images, (-(-len(images) // batch) * batch, *images.shape[1:]))
    wanted = [o.name for o in session.get_outputs() if o.name in set(names)]
    found: dict[str, list[np.ndarray]] = {name: [] for name in wanted}
    for start in range(0, len(images), batch):
        values = session.run(wanted, {feed.name: np.ascontiguousarray(images[start : start + batch])})
        for name, value in zip(wanted, values):
            found[name].append(value.astype(np.float64))
    return found


def every_tensor_session(model: onnx.ModelProto):
    """An ONNX Runtime CPU session of ``model`` with no graph optimization, so every tensor it exposes is computed."""
    return cpu_session(model.SerializeToString(), every_tensor=True)
