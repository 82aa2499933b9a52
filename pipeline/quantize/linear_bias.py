"""Sequential bias correction of linear layers (MatMul + bias Add): each takes back the mean shift it sees.

Rounding activations to 8 bits moves the mean of every later tensor, and in a transformer block
or a classifier head that shift reaches the logits: a recognizer's per-position argmax flips where
two classes are close. ``correct_linear_biases`` runs the FP32 model once for the mean of each
linear layer's output over every axis but the last (its features), then, in graph order, the
quantized model with every earlier correction in place, and adds the difference to that layer's
bias: the shift that activation quantization upstream leaves, not only the layer's own. Only the
part of the graph that the corrections change runs again for each layer (``_Tail``: its inputs
are read once from the quantized model). Only float bias constants change; no Q/DQ node or scale
moves.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from pipeline.onnxinfo import cpu_session
from pipeline.quantize.ranges import expose

IMAGES = 64  # calibration images the means are measured on
_CHUNK = 16


def correct_linear_biases(fp32: onnx.ModelProto, qdq: onnx.ModelProto, images: np.ndarray) -> onnx.ModelProto:
    """A copy of ``qdq`` whose MatMul + Add biases take back, in graph order, the mean shift of their outputs."""
    corrected = onnx.ModelProto()
    corrected.CopyFrom(qdq)
    sites = linear_sites(corrected, fp32)
    if not sites:
        return corrected
    images = np.ascontiguousarray(images[:IMAGES])
    outputs = [tensor for _, _, tensor in sites]
    reference = _feature_means(_sessions(fp32, outputs), outputs, _chunks(images))
    tail = _Tail(corrected, sites[0][0], outputs, images)
    for add, bias, tensor in sites:
        delta = reference[tensor] - tail.means(tensor)
        _add_to_constant(corrected.graph, add, bias, delta)
        tail.correct(add.output[0], bias, delta)
    return corrected


def linear_sites(model: onnx.ModelProto, fp32: onnx.ModelProto) -> list[tuple[onnx.NodeProto, str, str]]:
    """Each Add that adds a float constant vector (the bias, one value per feature) to a MatMul's output, in graph
    order, with the bias's initializer name and the tensor both models have for its output (a Cast's after it where
    the high-precision remainder renames it)."""
    fp32_tensors = {out for node in fp32.graph.node for out in node.output}
    constants = {init.name: init for init in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    casts = {node.input[0]: node.output[0] for node in model.graph.node if node.op_type == "Cast"}
    sites = []
    for node in model.graph.node:
        tensor = node.output[0] if node.output[0] in fp32_tensors else casts.get(node.output[0])
        if node.op_type != "Add" or tensor not in fp32_tensors or len(node.input) != 2:
            continue
        sources = [_behind_cast(name, producers) for name in node.input]
        biases = [name for name in sources if name in constants and len(constants[name].dims) == 1]
        others = [producers.get(name) for name in sources if name not in constants]
        if len(biases) == 1 and len(others) == 1 and others[0] is not None and others[0].op_type == "MatMul":
            if numpy_helper.to_array(constants[biases[0]]).dtype.kind == "f":
                sites.append((node, biases[0], tensor))
    return sites


class _Tail:
    """The nodes the corrections can change (downstream of the first corrected Add), as a model whose inputs are the
    tensors they read from the rest, read once from the quantized model on the images."""

    def __init__(self, model: onnx.ModelProto, first: onnx.NodeProto, outputs: list[str], images: np.ndarray):
        nodes = _downstream(model, first)
        made = {out for node in nodes for out in node.output}
        constants = {init.name for init in model.graph.initializer}
        cut = list(dict.fromkeys(n for node in nodes for n in node.input if n and n not in made | constants))
        given = model.graph.input[0].name  # the tail may read the model's input too
        exposed, types = onnx.ModelProto(), _types(model)
        exposed.CopyFrom(model)
        read = [name for name in cut if name != given]
        exposed.graph.output.extend(onnx.helper.make_tensor_value_info(n, types.get(n, 1), None) for n in read)
        values = _run(cpu_session(exposed.SerializeToString(), every_tensor=True), read, _chunks(images))
        # per chunk: a shape tensor is not stacked
        self.inputs = [{**chunk, given: x} if given in cut else chunk for chunk, x in zip(values, _chunks(images))]
        self.model = _sub_model(model, nodes, cut, outputs)

    def means(self, name: str) -> np.ndarray:
        return _feature_means(_sessions(self.model, [name]), [name], self.inputs)[name]

    def correct(self, output: str, bias: str, delta: np.ndarray) -> None:
        """The same correction in the tail: the Add that makes ``output`` takes ``delta`` on its bias."""
        add = next(node for node in self.model.graph.node if output in node.output)
        _add_to_constant(self.model.graph, add, bias, delta)


def _downstream(model: onnx.ModelProto, first: onnx.NodeProto) -> list[onnx.NodeProto]:
    """``first`` and the nodes after it that read anything it or a later one of them makes."""
    reached, nodes = set(first.output), []
    for node in model.graph.node:
        if node is first or any(name in reached for name in node.input):
            nodes.append(node)
            reached.update(node.output)
    return nodes


def _sub_model(model: onnx.ModelProto, nodes, inputs: list[str], outputs: list[str]) -> onnx.ModelProto:
    types = _types(model)
    used = {name for node in nodes for name in node.input}
    graph = onnx.helper.make_graph(
        [_copy(node) for node in nodes],
        "tail",
        [onnx.helper.make_tensor_value_info(name, types.get(name, onnx.TensorProto.FLOAT), None) for name in inputs],
        [onnx.helper.make_tensor_value_info(name, types.get(name, onnx.TensorProto.FLOAT), None) for name in outputs],
        [init for init in model.graph.initializer if init.name in used],
    )
    return onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)


def _types(model: onnx.ModelProto) -> dict[str, int]:
    """Every tensor's element type, by shape inference (Constant nodes' outputs included)."""
    inferred = onnx.shape_inference.infer_shapes(model).graph
    return {v.name: v.type.tensor_type.elem_type for v in [*inferred.value_info, *inferred.input, *inferred.output]}


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    made = onnx.NodeProto()
    made.CopyFrom(node)
    return made


def _sessions(model: onnx.ModelProto, names: list[str]):
    exposed, _ = expose(model, names)
    return cpu_session(exposed.SerializeToString(), every_tensor=True)


def _chunks(images: np.ndarray) -> list[np.ndarray]:
    return [images[start : start + _CHUNK] for start in range(0, len(images), _CHUNK)]


def _run(session, names: list[str], feeds: list) -> list[dict[str, np.ndarray]]:
    """``names`` for each feed: an array (the model's one input) or a dict of inputs."""
    first = session.get_inputs()[0].name
    return [
        dict(zip(names, session.run(names, given if isinstance(given, dict) else {first: given}))) for given in feeds
    ]


def _feature_means(session, names: list[str], feeds: list) -> dict[str, np.ndarray]:
    """Mean of each named tensor over every axis but the last, over ``feeds``."""
    parts = _run(session, names, feeds)
    return {
        name: np.concatenate([p[name].reshape(-1, p[name].shape[-1]) for p in parts]).astype(np.float64).mean(axis=0)
        for name in names
    }


def _add_to_constant(graph: onnx.GraphProto, add: onnx.NodeProto, bias: str, delta: np.ndarray) -> None:
    """Add ``delta`` to the bias ``bias`` of ``add``, as a constant of the Add's own (shared constants stay)."""
    initializers = {init.name: init for init in graph.initializer}
    value = numpy_helper.to_array(initializers[bias])
    own = f"{add.name}_bias_corrected"
    updated = numpy_helper.from_array((value.astype(np.float64) + delta).astype(value.dtype), own)
    if own in initializers:
        initializers[own].CopyFrom(updated)
    else:
        graph.initializer.append(updated)
    producers = {out: node for node in graph.node for out in node.output}
    for node in [add, *(producers[name] for name in add.input if name in producers)]:
        node.input[:] = [own if name == bias else name for name in node.input]


def _behind_cast(name: str, producers: dict) -> str:
    while name in producers and producers[name].op_type == "Cast":
        name = producers[name].input[0]
    return name
