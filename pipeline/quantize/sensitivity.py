"""Which quantized nodes hurt accuracy most: the ranking the INT8 accuracy budget search follows."""

from __future__ import annotations

import numpy as np
import onnx

from pipeline.precision import QDQ_OPS
from pipeline.quantize.graph import PASS_THROUGH_OPS

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
    ranked_nodes = [
        node
        for node in int8_model.graph.node
        if node.op_type not in _NOT_RANKED
        and node.name
        and node.output[0] in fp32_names
        and any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in node.input)
    ]
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
    import onnxruntime as ort  # a second to import: only INT8 calibration and budget searches pay for it

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
