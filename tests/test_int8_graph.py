"""INT8's graph half: inputs refused before ModelOpt, the clean-up that reaches every Conv, TensorRT's fusion
rules, the FP16 remainder with --fp16's block list, and which compute nodes stay out of INT8 and why."""

import os

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from pipeline import quantize
from pipeline.errors import EdgepipeError
from pipeline.onnxinfo import run_onnxruntime
from pipeline.quantize.depthwise import depthwise_convs
from pipeline.quantize.fusion import fusion_exclusions
from pipeline.quantize.graph import quantized_nodes
from pipeline.quantize.prepare import check_quantizable, clean_up
from pipeline.quantize.remainder import build, underflowing_qdq


def _graph(nodes, inits, shape=("N", 8, 8, 8), out_shape=None, opset=17):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape or shape))],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float32) if k != "zp" else v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_an_already_quantized_model_is_refused_in_one_line():
    model = _graph([helper.make_node("ConvInteger", ["x", "w"], ["y"], name="convint")], {"w": np.zeros((8, 8, 1, 1))})
    with pytest.raises(EdgepipeError, match=r"already quantized \(it has ConvInteger\)") as error:
        check_quantizable(model)
    assert "FP32 model" in error.value.fix


def test_control_flow_is_named_with_a_fix():
    branch = helper.make_graph([], "b", [], [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)])
    model = _graph(
        [helper.make_node("If", ["cond"], ["y"], name="/decoder/If_3", then_branch=branch, else_branch=branch)],
        {"cond": np.ones(())},
    )
    with pytest.raises(EdgepipeError, match=r"control flow .*If node '/decoder/If_3'") as error:
        check_quantizable(model)
    assert "--fp16" in error.value.fix


def test_clean_up_folds_identity_and_a_separate_scale_and_bias_into_the_conv():
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Identity", ["x"], ["xi"], name="id"),
        helper.make_node("Conv", ["xi", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["c", "s"], ["m"], name="scale"),
        helper.make_node("Add", ["m", "b"], ["a"], name="bias"),
        helper.make_node("Relu", ["a"], ["y"], name="relu"),
    ]
    inits = {"w": rng.normal(size=(8, 8, 3, 3)), "s": rng.normal(size=(1,)), "b": rng.normal(size=(1,))}
    model = _graph(nodes, inits)
    x = rng.normal(size=(2, 8, 8, 8)).astype(np.float32)
    cleaned, record = clean_up(model, x)
    assert [n.op_type for n in cleaned.graph.node] == ["Conv", "Relu"]
    assert record["applied"] and record["folded"]["Mul/Add into Conv"] == 2 and record["folded"]["Identity"] == 1
    assert record["relative_change"] < 1e-5
    np.testing.assert_allclose(run_onnxruntime(cleaned, x)["y"], run_onnxruntime(model, x)["y"], rtol=1e-4, atol=1e-4)


def test_underflowing_scales_stay_fp32_in_the_fp16_remainder():
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "tiny", "zp"], ["q"], name="q_tiny"),
        helper.make_node("DequantizeLinear", ["q", "tiny", "zp"], ["d"], name="dq_tiny"),
        helper.make_node("GlobalAveragePool", ["d"], ["r"], name="mean"),
        helper.make_node("Softmax", ["r"], ["s"], name="softmax", axis=1),
        helper.make_node("Mul", ["d", "s"], ["y"], name="gate"),
    ]
    inits = {"tiny": np.asarray(1.8e-7, np.float32), "zp": np.zeros((), np.int8)}
    model = _graph(nodes, inits, opset=19)
    assert underflowing_qdq(model) == ["q_tiny", "dq_tiny"]
    converted = build(model, "fp16")
    scales = {i.name: i for i in converted.graph.initializer}
    q = next(n for n in converted.graph.node if n.name == "q_tiny")
    assert scales[q.input[1]].data_type == TensorProto.FLOAT  # a subnormal in FP16: kept FP32
    typed = onnx.shape_inference.infer_shapes(converted)
    types = {v.name: v.type.tensor_type.elem_type for v in typed.graph.value_info}
    mean = next(n for n in converted.graph.node if n.op_type == "GlobalAveragePool")
    assert types.get(mean.output[0], TensorProto.FLOAT) == TensorProto.FLOAT  # --fp16's block list holds


class _MobileBlock(nn.Module):
    """A MobileNetV3-like block: Conv-BN-HardSwish, depthwise, a HardSigmoid SE gate, an Identity."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.Hardswish())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.Hardswish())
        self.se = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(16, 16, 1), nn.ReLU(), nn.Conv2d(16, 16, 1), nn.Hardsigmoid()
        )
        self.pw = nn.Sequential(nn.Conv2d(16, 32, 1), nn.Identity(), nn.Hardswish())
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        x = self.dw(self.stem(x))
        x = self.pw(x * self.se(x))
        return self.head(x.mean((2, 3)))


@pytest.fixture(scope="module")
def mobile(tmp_path_factory):
    torch.manual_seed(0)
    module = _MobileBlock().eval()
    with torch.no_grad():
        for bn in (module.stem[1], module.dw[1]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    folder = tmp_path_factory.mktemp("mobile")
    path = folder / "mobile.onnx"
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.onnx.export(module, (x,), str(path), opset_version=17, dynamo=False, input_names=["x"])
    rng = np.random.default_rng(0)
    images = (rng.random((64, 3, 32, 32)) * rng.random((64, 1, 1, 1))).astype(np.float32)  # varied scenes
    np.savez(folder / "calib.npz", inputs=images)
    return path, folder / "calib.npz"


def test_gate_muls_and_hardswish_follow_tensorrt_fusion_rules(mobile):
    model = onnx.load(str(mobile[0]))
    why = fusion_exclusions(model, quantize.Int8Settings().excluded_ops())
    assert any("gate Mul of HardSigmoid" in text for text in why.values())
    assert sum("HardSwish" in text for text in why.values()) == 3


def test_int8_of_a_mobilenet_block_reaches_every_conv_and_leaves_nothing_behind(mobile, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = quantize.to_int8(mobile[0], tmp_path / "out" / "m.int8.onnx", calib=str(mobile[1]))
    assert sorted(os.listdir(tmp_path)) == ["out"]  # ModelOpt's temporary files stay in its own folder
    model = onnx.load(result["onnx"])
    quantize.check_tensorrt_qdq_rules(model)
    producers = {out: n for n in model.graph.node for out in n.output}

    def dq_fed(node):
        return any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in node.input)

    assert not any(dq_fed(n) for n in model.graph.node if n.op_type in ("HardSwish", "HardSigmoid"))
    gate = [
        n
        for n in model.graph.node
        if n.op_type == "Mul"
        and any(producers.get(i) is not None and producers[i].op_type in ("HardSigmoid", "Cast") for i in n.input)
    ]
    assert gate and not any(dq_fed(n) for n in gate)
    assert result["clean_up"]["applied"] and result["clean_up"]["relative_change"] < 1e-3
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 5 and result["macs"]["int8_share"] > 90
    out = {row["node"]: row["why"] for row in result["macs"]["out_of_int8"]}
    assert all(isinstance(why, str) and why for why in out.values())
    assert (
        result["attempts"][0]["how"] == "plain" and result["attempts"][0]["int8_share"] == result["macs"]["int8_share"]
    )


def test_a_depthwise_conv_kept_out_by_name_leaves_the_convs_around_it_in_int8(mobile, tmp_path):
    (depthwise,) = depthwise_convs(onnx.load(str(mobile[0])))
    result = quantize.to_int8(mobile[0], tmp_path / "m.int8.onnx", calib=str(mobile[1]), exclude_nodes=[depthwise])
    model = onnx.load(result["onnx"])
    quantize.check_tensorrt_qdq_rules(model)
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    assert set(quantized_nodes(model)) & set(convs) == set(convs) - {depthwise}  # fed its FP32 input after PTQ
    assert {row["node"]: row["why"] for row in result["macs"]["out_of_int8"]}[depthwise] == "--exclude-node"
