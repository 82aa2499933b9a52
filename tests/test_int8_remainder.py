"""The INT8 model's FP16 remainder: a Conv whose INT32 bias would overflow FP16 stays FP32 with its Q/DQ nodes.

ONNX Runtime quantizes the float bias of a Q/DQ Conv (bias / (input scale x weight scale), in the scales'
type); with an image input's scale (1/127) and a small weight scale that quotient passes FP16's 65504.
"""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from pipeline import quantize
from pipeline.build import build_engine
from pipeline.onnxinfo import run_onnxruntime
from pipeline.quantize.remainder import FP16_MAX, build, overflowing_bias

INPUT_SCALE = 1 / 127  # an image in [0, 1], max-calibrated
RNG = np.random.default_rng(0)


def _qdq(name, scale, axis=None):
    """Q and DQ nodes named ``name``_q/_dq for tensor ``name`` with its own scale initializer."""
    extra = {} if axis is None else {"axis": axis}
    return [
        helper.make_node(
            "QuantizeLinear", [name, f"{name}_s", f"{name}_zp"], [f"{name}_i8"], name=f"{name}_q", **extra
        ),
        helper.make_node(
            "DequantizeLinear", [f"{name}_i8", f"{name}_s", f"{name}_zp"], [f"{name}_f"], name=f"{name}_dq", **extra
        ),
    ], {f"{name}_s": np.asarray(scale, np.float32), f"{name}_zp": np.zeros(np.shape(scale), np.int8)}


def _two_convs() -> onnx.ModelProto:
    """x -> Q/DQ -> stem Conv (small weight scales, bias ~0.5: its INT32 bias overflows FP16) -> Relu -> Q/DQ ->
    body Conv (ordinary scales) -> y, with per-channel weight Q/DQ as ModelOpt writes them."""
    stem_w = RNG.uniform(-0.02, 0.02, (8, 3, 3, 3)).astype(np.float32)
    body_w = RNG.uniform(-0.5, 0.5, (8, 8, 3, 3)).astype(np.float32)
    nodes, inits = [], {"stem_w": stem_w, "body_w": body_w}
    inits["stem_b"] = RNG.uniform(0.3, 0.6, 8).astype(np.float32)
    inits["body_b"] = RNG.uniform(-0.1, 0.1, 8).astype(np.float32)
    for name, scale, axis in (
        ("x", INPUT_SCALE, None),
        ("stem_w", np.abs(stem_w).max((1, 2, 3)) / 127, 0),
        ("r", 0.01, None),
        ("body_w", np.abs(body_w).max((1, 2, 3)) / 127, 0),
    ):
        made, values = _qdq(name, scale, axis)
        nodes += made
        inits.update(values)
    nodes[4:4] = [
        helper.make_node("Conv", ["x_f", "stem_w_f", "stem_b"], ["s"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["s"], ["r"], name="relu"),
    ]
    nodes.append(helper.make_node("Conv", ["r_f", "body_w_f", "body_b"], ["y"], name="body", pads=[1, 1, 1, 1]))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
        [numpy_helper.from_array(value, name) for name, value in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def _types(model: onnx.ModelProto) -> dict[str, int]:
    typed = onnx.shape_inference.infer_shapes(model)
    infos = list(typed.graph.value_info) + list(typed.graph.input) + list(typed.graph.output)
    return {info.name: info.type.tensor_type.elem_type for info in infos}


def test_a_conv_whose_int32_bias_overflows_fp16_stays_fp32_with_its_qdq():
    model = _two_convs()
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    bias_scale = (np.float16(INPUT_SCALE) * values["stem_w_s"].astype(np.float16)).astype(np.float16)
    with np.errstate(over="ignore"):
        assert np.isinf(values["stem_b"].astype(np.float16) / bias_scale).any()  # what ONNX Runtime would compute
    assert np.max(values["body_b"] / (0.01 * values["body_w_s"])) < FP16_MAX / 2  # the body Conv's fits

    kept = overflowing_bias(model)
    assert sorted(kept) == ["stem", "stem_w_dq", "stem_w_q", "x_dq", "x_q"]
    converted = build(model, "fp16")
    types = _types(converted)
    stem = next(n for n in converted.graph.node if n.name == "stem")
    body = next(n for n in converted.graph.node if n.name == "body")
    assert types[stem.output[0]] == TensorProto.FLOAT and types[body.input[0]] == TensorProto.FLOAT16
    dtypes = {i.name: i.data_type for i in converted.graph.initializer}
    nodes = {n.name: n for n in converted.graph.node}
    assert {dtypes[nodes[name].input[1]] for name in kept if name != "stem"} == {TensorProto.FLOAT}
    assert dtypes[stem.input[2]] == TensorProto.FLOAT
    assert dtypes[nodes["body_w_dq"].input[1]] == dtypes[body.input[2]] == TensorProto.FLOAT16  # only what overflows

    x = RNG.random((1, 3, 8, 8)).astype(np.float32)
    reference, fp16 = run_onnxruntime(model, x)["y"], run_onnxruntime(converted, x)["y"]
    assert np.abs(fp16 - reference).max() < 0.02 * np.abs(reference).max()


class _Stem(nn.Module):
    """An image stem whose near-dead channels (small weights, a bias as BatchNorm folds it) carry a constant."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(16, 4)
        with torch.no_grad():
            self.stem.weight[8:].uniform_(-0.02, 0.02)
            self.stem.bias.uniform_(0.3, 0.6)

    def forward(self, x):
        return self.head(self.body(self.stem(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def stem_model(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("stem")
    path = folder / "stem.onnx"
    with torch.no_grad():
        torch.onnx.export(_Stem().eval(), (torch.rand(1, 3, 24, 24),), str(path), opset_version=17, dynamo=False)
    np.savez(folder / "calib.npz", inputs=RNG.random((64, 3, 24, 24)).astype(np.float32))
    return path, folder / "calib.npz"


def test_int8_with_an_fp16_remainder_keeps_an_overflowing_stem_fp32_and_its_accuracy(stem_model, tmp_path):
    path, calib = stem_model
    result = quantize.to_int8(path, tmp_path / "stem.int8.onnx", calib=str(calib), method="max", max_drop=None)
    model = onnx.load(result["onnx"])
    producers = {out: node for node in model.graph.node for out in node.output}
    stem = next(n for n in model.graph.node if n.op_type == "Conv")  # the first in topological order
    assert producers[stem.input[0]].op_type == producers[stem.input[1]].op_type == "DequantizeLinear"  # INT8 still
    assert _types(model)[stem.output[0]] == TensorProto.FLOAT
    assert result["cosine"] > 0.999 and result["agreement"] >= 95
    engine = build_engine(result["onnx"], save_engine=tmp_path / "stem.int8.engine")  # TensorRT-RTX, on the CPU
    assert engine["precision"] == "int8"
