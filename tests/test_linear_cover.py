"""MatMuls that ModelOpt's Q/DQ placement leaves out of INT8, quantized as TensorRT runs them."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from test_linear_bias import SHAPE, export_sequence, images

from pipeline import quantize
from pipeline.onnxinfo import run_onnxruntime
from pipeline.quantize.graph import quantized_nodes
from pipeline.quantize.linear_cover import cover_linear_layers
from pipeline.quantize.qdq_rules import check_tensorrt_qdq_rules
from pipeline.quantize.ranges import collect, parse_method, ranges_for


@pytest.fixture(scope="module")
def sequence(tmp_path_factory):
    """The FP32 model, its INT8 model with the first linear layer's Q/DQ taken off, ranges and MACs."""
    folder = tmp_path_factory.mktemp("cover")
    path = export_sequence(folder / "sequence.onnx")
    np.savez(folder / "images.npz", inputs=images(64, seed=0))
    quantize.to_int8(path, folder / "int8.onnx", calib=str(folder / "images.npz"), high_precision="fp32", max_drop=None)
    fp32 = onnx.load(str(path))
    left_out = quantize.keep_in_high_precision(onnx.load(str(folder / "int8.onnx")), ["/mix/MatMul"])
    amaxes = ranges_for(collect(fp32, images(64, seed=0)), parse_method("max"))
    return fp32, left_out, amaxes, quantize.count_macs(fp32, (1, *SHAPE))


def test_a_matmul_left_out_is_quantized_per_column_at_its_range(sequence):
    fp32, left_out, amaxes, macs = sequence
    assert "/mix/MatMul" not in quantized_nodes(left_out)
    covered, names = cover_linear_layers(_copy(left_out), amaxes, set(), macs)
    assert names == ["/mix/MatMul"] and "/mix/MatMul" in quantized_nodes(covered)
    onnx.checker.check_model(covered)
    check_tensorrt_qdq_rules(covered)
    values = {init.name: numpy_helper.to_array(init) for init in covered.graph.initializer}
    producers = {out: node for node in covered.graph.node for out in node.output}
    matmul = next(node for node in covered.graph.node if node.name == "/mix/MatMul")
    activation, weight = (producers[name] for name in matmul.input)
    assert values[activation.input[1]].shape == () and np.isclose(
        values[activation.input[1]], amaxes[producers[activation.input[0]].input[0]] / 127
    )
    assert values[weight.input[1]].shape == (32,) and [a.i for a in weight.attribute if a.name == "axis"] == [1]
    x = images(16, seed=5)
    reference = run_onnxruntime(fp32, x)["scores"]
    errors = [
        np.linalg.norm(run_onnxruntime(model, x)["scores"] - reference) / np.linalg.norm(reference)
        for model in (left_out, covered)
    ]
    assert errors[1] < 1.1 * errors[0]  # rounding one more layer adds little to the model's INT8 error


def test_small_gemv_and_excluded_matmuls_stay_as_they_are(sequence):
    fp32, _, amaxes, macs = sequence
    # the head (32 x 10) is below TensorRT's INT8 GEMM size; the first layer is excluded by name
    assert cover_linear_layers(_copy(fp32), amaxes, {"/mix/MatMul"}, macs)[1] == []
    assert cover_linear_layers(_copy(fp32), amaxes, set(), macs)[1] == ["/mix/MatMul"]
    gemv = {**macs, "/mix/MatMul": 16 * 32}  # one row per sample
    assert cover_linear_layers(_copy(fp32), amaxes, set(), gemv)[1] == []
    assert cover_linear_layers(_copy(fp32), amaxes, set(), None)[1] == []  # MACs unknown: rows unknown


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy
