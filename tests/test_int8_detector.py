"""INT8 of a detector-like model (DBNet's shape: a backbone with a depthwise Conv, an upsample + concat neck,
a ConvTranspose + Sigmoid head giving a 1-channel probability map): the check reads the graph as it
computes, and a missed cosine budget first feeds the depthwise Convs unquantized inputs."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from pipeline import quantize
from pipeline.onnxinfo import run_onnxruntime
from pipeline.quantize.depthwise import depthwise_convs


class _Detector(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU())
        # channels of very different ranges into a depthwise Conv: one per-tensor INT8 scale serves them all
        self.spread = nn.Parameter(torch.logspace(-2, 1, 32).view(1, 32, 1, 1))
        self.dw = nn.Conv2d(32, 32, 3, 1, 1, groups=32)
        self.pw = nn.Sequential(nn.Conv2d(32, 32, 1), nn.Hardswish())
        self.down = nn.Sequential(nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU())
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.fuse = nn.Sequential(nn.Conv2d(64, 32, 3, 1, 1), nn.ReLU())
        self.head = nn.Sequential(nn.ConvTranspose2d(32, 16, 2, 2), nn.ReLU(), nn.Conv2d(16, 1, 3, 1, 1))

    def forward(self, x):
        x = self.stem(x)
        x = self.pw(self.dw(x * self.spread) / self.spread)
        return torch.sigmoid(self.head(self.fuse(torch.cat([x, self.up(self.down(x))], 1))))


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    torch.manual_seed(0)
    module = _Detector().eval()
    with torch.no_grad():
        module.fuse[0].bias.add_(4.0)  # a bias large against its scales: its INT32 form overflows FP16
        module.head[2].weight.mul_(30.0)  # a map with contrast: text near 1, background near 0
        module.head[2].bias.fill_(-2.0)
    folder = tmp_path_factory.mktemp("detector")
    path = folder / "det.onnx"
    with torch.no_grad():
        torch.onnx.export(
            module,
            (torch.rand(1, 3, 64, 64),),
            str(path),
            opset_version=17,
            dynamo=False,
            input_names=["x"],
            dynamic_axes={"x": {0: "n"}},
        )
    rng = np.random.default_rng(0)
    pages = (rng.random((96, 3, 64, 64)) * rng.random((96, 1, 1, 1)) * 2 - 0.5).astype(np.float32)
    np.savez(folder / "pages.npz", inputs=pages)
    return path, folder / "pages.npz", pages


def _cosine(a, b):
    return float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_the_check_reads_an_fp16_remainder_as_the_graph_computes_it(detector, tmp_path):
    path, data, pages = detector
    result = quantize.to_int8(path, tmp_path / "det.int8.onnx", data=str(data), method="max", max_drop=None)
    model = onnx.load(result["onnx"])
    assert any(n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.FLOAT16 for n in model.graph.node)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the graph's own arithmetic
    graph = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    held = pages[-16:]
    as_computed = graph.run(None, {"x": held})[0]
    checked = next(iter(run_onnxruntime(model, held).values()))
    fp32 = next(iter(run_onnxruntime(str(path), held).values()))
    assert abs(_cosine(fp32, checked) - _cosine(fp32, as_computed)) < 1e-3


def test_a_missed_map_budget_first_keeps_the_depthwise_convs_out_of_int8(detector, tmp_path):
    path, data, _ = detector
    plain = quantize.to_int8(path, tmp_path / "plain.onnx", data=str(data), method="max", max_drop=None)
    budget = plain["cosine"] + (1 - plain["cosine"]) / 2
    result = quantize.to_int8(path, tmp_path / "det.int8.onnx", data=str(data), method="max", min_cosine=budget)
    assert [a["how"] for a in result["attempts"][:2]] == ["plain", "depthwise in higher precision"]
    assert result["cosine"] >= budget and result["macs"]["int8_share"] > 90
    model = onnx.load(result["onnx"])
    quantize.check_tensorrt_qdq_rules(model)
    depthwise = depthwise_convs(onnx.load(str(path)))
    producers = {out: n for n in model.graph.node for out in n.output}
    convs = {n.name: n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")}
    assert depthwise and all(producers[convs[name].input[0]].op_type != "DequantizeLinear" for name in depthwise)
    dense = [n for name, n in convs.items() if name not in depthwise and producers.get(n.input[0]) is not None]
    assert sum(producers[n.input[0]].op_type == "DequantizeLinear" for n in dense) >= 4
    out = {row["node"]: row["why"] for row in result["macs"]["out_of_int8"]}
    assert all("depthwise" in out[name] for name in depthwise)
