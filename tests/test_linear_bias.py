"""Sequential bias correction of linear layers (MatMul + bias Add) on a small sequence model."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from foreign_models import _export, _seeded
from torch import nn

from pipeline import quantize
from pipeline.quantize.linear_bias import correct_linear_biases, linear_sites
from pipeline.quantize.qdq_rules import check_tensorrt_qdq_rules

SHAPE = (3, 8, 8)


class TinySequence(nn.Module):
    """A conv stem read as a sequence of 64 positions, two linear layers on it: [N, 64, 10] scores per position."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.mix = nn.Linear(16, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x)).flatten(2).transpose(1, 2)
        return self.head(torch.relu(self.mix(x)))


def export_sequence(path):
    """The model as an ONNX file with a dynamic batch: "image" N x 3 x 8 x 8 -> "scores" N x 64 x 10."""
    shape_axes = {"image": {0: "batch"}, "scores": {0: "batch"}}
    return _export(_seeded(TinySequence(), 0), path, (torch.randn(1, *SHAPE),), ["image"], ["scores"], shape_axes, 17)


def images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_t(2.5, size=(count, *SHAPE)).astype(np.float32)


@pytest.fixture(scope="module")
def clipped(tmp_path_factory):
    """The model, and its INT8 version whose tight ranges (percentile 99) clip the long tails: biased means."""
    folder = tmp_path_factory.mktemp("sequence")
    path = export_sequence(folder / "sequence.onnx")
    np.savez(folder / "images.npz", inputs=images(96, seed=0))
    quantize.to_int8(
        path, folder / "clipped.onnx", calib=str(folder / "images.npz"), method="percentile-99", max_drop=None
    )
    return onnx.load(str(path)), onnx.load(str(folder / "clipped.onnx"))


def _outputs(model: onnx.ModelProto, x: np.ndarray, names: list[str]) -> list[np.ndarray]:
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {o.name for o in exposed.graph.output}
    exposed.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names if n not in present)
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    return [value.astype(np.float64) for value in session.run(names, {"image": x})]


def test_linear_sites_are_the_bias_adds_of_both_linear_layers(clipped):
    fp32, qdq = clipped
    sites = linear_sites(qdq, fp32)
    matmuls = [node for node in qdq.graph.node if node.op_type == "MatMul"]
    assert len(sites) == 2 and len(matmuls) == 2
    producers = {out: node for node in qdq.graph.node for out in node.output}
    assert all(any(producers.get(i) in matmuls for i in add.input) for add, _, _ in sites)


def test_correction_takes_back_each_layers_mean_shift_on_held_out_images(clipped):
    fp32, qdq = clipped
    corrected = correct_linear_biases(fp32, qdq, images(64, seed=1))
    check_tensorrt_qdq_rules(corrected)
    adds = [tensor for _, _, tensor in linear_sites(qdq, fp32)]
    held_out = images(64, seed=7)
    reference = _outputs(fp32, held_out, adds)
    for before, after, ref, name in zip(
        _outputs(qdq, held_out, adds), _outputs(corrected, held_out, adds), reference, adds
    ):
        shift = [np.abs((got - ref).reshape(-1, ref.shape[-1]).mean(axis=0)).mean() for got in (before, after)]
        assert shift[0] > 0.01, name  # the planted shift: clipping moved the means
        assert shift[1] < 0.5 * shift[0], name
    scores = reference[-1] if adds[-1] == "scores" else _outputs(fp32, held_out, ["scores"])[0]
    error = [((_outputs(m, held_out, ["scores"])[0] - scores) ** 2).mean() for m in (qdq, corrected)]
    assert error[1] < error[0]


def test_only_biases_change(clipped):
    fp32, qdq = clipped
    corrected = correct_linear_biases(fp32, qdq, images(32, seed=1))
    assert [n.op_type for n in corrected.graph.node] == [n.op_type for n in qdq.graph.node]
    qdq_scales = {i.name: onnx.numpy_helper.to_array(i) for i in qdq.graph.initializer}
    for init in corrected.graph.initializer:
        if init.name in qdq_scales:
            assert np.array_equal(onnx.numpy_helper.to_array(init), qdq_scales[init.name]), init.name


def test_a_model_without_linear_layers_is_returned_unchanged(clipped):
    fp32, qdq = clipped
    assert linear_sites(fp32, onnx.ModelProto()) == []
    convs_only = onnx.ModelProto()
    convs_only.CopyFrom(qdq)
    for node in convs_only.graph.node:
        if node.op_type == "Add":
            node.op_type = "Sub"  # no bias Add left
    assert correct_linear_biases(fp32, convs_only, images(16, seed=1)) == convs_only


def test_auto_tries_the_correction_on_a_model_with_linear_layers(clipped, tmp_path):
    fp32, _ = clipped
    onnx.save(fp32, str(tmp_path / "sequence.onnx"))
    np.savez(tmp_path / "images.npz", inputs=images(96, seed=0))
    result = quantize.to_int8(tmp_path / "sequence.onnx", tmp_path / "auto.onnx", calib=str(tmp_path / "images.npz"))
    rows = [row["method"] for row in result["methods_tried"]]
    assert any(name.endswith("+linear-bias") for name in rows) and any(name.endswith("+bias") for name in rows)
