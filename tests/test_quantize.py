"""FP16 and INT8 ONNX models from ModelOpt: accuracy on held-out data, TensorRT Q/DQ rules, bad input."""

import json

import numpy as np
import onnx
import pytest
from conftest import invoke
from onnx import TensorProto, helper, numpy_helper

import calibration
from pipeline import quantize
from pipeline.artifacts import read_manifest
from pipeline.errors import EdgepipeError
from pipeline.precision import Precision, is_quantized, of_onnx
from pipeline.quantize.modelopt_log import modelopt_error
from pipeline.tensorrt.messages import _parser_fix


@pytest.fixture(scope="module")
def fp16(exported, tmp_path_factory):
    return quantize.to_fp16(exported, tmp_path_factory.mktemp("fp16") / "model.fp16.onnx")


@pytest.fixture(scope="module")
def int8(exported, trained, tmp_path_factory):
    calib = calibration.draw_for(trained[0], num=256, seed=0)
    return quantize.to_int8(exported, tmp_path_factory.mktemp("int8") / "model.int8.onnx", calib=calib)


def test_fp16_meets_accuracy_targets(fp16):
    assert fp16["precision"] == "fp16"
    assert abs(fp16["delta"]) <= 0.1 and fp16["agreement"] >= 99.9
    model = onnx.load(fp16["onnx"])
    assert of_onnx(model) == "fp16"
    # inputs and outputs stay FP32; the SE squeeze (ReduceMean) is computed in FP32
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert "ReduceMean" in fp16["fp32_ops"]
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    reduce_inputs = [n.input[0] for n in model.graph.node if n.op_type == "ReduceMean"]
    assert reduce_inputs and all(types[name] == TensorProto.FLOAT for name in reduce_inputs)
    manifest = read_manifest(fp16["onnx"])
    assert manifest["params"]["precision"] == "fp16" and manifest["precision"] == "fp16"
    figures = (
        "samples",
        "top1",
        "reference_top1",
        "delta",
        "agreement",
        "max_abs_diff",
        "mean_abs_diff",
        "cosine",
        "cosine_min",
        "outputs",
    )
    assert manifest["accuracy"] == {name: fp16[name] for name in figures}


def test_int8_meets_accuracy_targets_and_tensorrt_rules(int8, exported):
    assert abs(int8["delta"]) <= 0.5 and int8["agreement"] >= 99.0
    model = onnx.load(int8["onnx"])
    assert is_quantized(model) and of_onnx(model) == "int8"
    quantize.check_tensorrt_qdq_rules(model)
    # the model's record survives quantization, so later stages read its images the same way
    from pipeline.images import Record

    assert Record.of_onnx(model) == Record.of_onnx(onnx.load(str(exported)))
    manifest = read_manifest(int8["onnx"])
    assert manifest["inputs"]["calibration"] == int8["calibration"]["sha256"]
    assert (
        manifest["params"]["excluded_ops"] == ["HardSigmoid", "Sigmoid", "Softmax"]
        and manifest["params"]["high_precision"] == "fp16"
    )


def test_int8_keeps_attention_gates_unquantized(int8):
    model = onnx.load(int8["onnx"])
    producers = {out: n for n in model.graph.node for out in n.output}
    gates = [n for n in model.graph.node if n.op_type in ("Sigmoid", "Softmax")]
    assert gates
    for gate in gates:
        assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in gate.input), (
            gate.name
        )


def test_already_converted_models_are_refused(int8, fp16, tmp_path):
    with pytest.raises(EdgepipeError, match="already INT8"):
        quantize.to_int8(int8["onnx"], tmp_path / "again.onnx")
    with pytest.raises(EdgepipeError, match="already INT8"):
        quantize.to_fp16(int8["onnx"], tmp_path / "again.onnx")
    with pytest.raises(EdgepipeError, match="already FP16"):
        quantize.to_int8(fp16["onnx"], tmp_path / "again.onnx")
    assert not (tmp_path / "again.onnx").exists()


def test_unknown_exclude_op_lists_the_model_ops(exported, tmp_path):
    with pytest.raises(EdgepipeError, match=r"no LayerNorm op \(it has: .*Conv.*Sigmoid"):
        quantize.to_int8(exported, tmp_path / "x.onnx", exclude_ops=["LayerNorm"])


def test_onnx_without_metadata_converts_to_fp16_but_needs_calibration_images_for_int8(exported, tmp_path):
    model = onnx.load(exported)
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, bare)
    result = quantize.to_fp16(bare, tmp_path / "bare.fp16.onnx")
    assert result["check"]["on"] == "synthetic" and result["samples"] == 32 and result["agreement"] >= 90
    with pytest.raises(EdgepipeError, match="--int8 needs calibration images: .* records no data to draw them from"):
        quantize.to_int8(bare, tmp_path / "bare.int8.onnx")
    assert not (tmp_path / "bare.int8.onnx").exists()


def test_max_drop_keeps_sensitive_nodes_until_within_budget(exported, trained, tmp_path):
    # Calibrating on images shrunk towards the mean clips every activation range: INT8 collapses,
    # and only keeping nodes in higher precision brings it back within the budget.
    good = calibration.draw_for(trained[0], num=128, seed=0)
    shrunk = calibration.CalibrationSet(good.images * 0.1, good.labels, good.manifest)
    result = quantize.to_int8(exported, tmp_path / "budget.onnx", calib=shrunk, max_drop=0.5)
    assert result["attempts"][0]["delta"] < -0.5
    assert result["kept_nodes"] and -result["delta"] <= 0.5
    assert set(result["kept_nodes"]) <= set(result["excluded_nodes"])
    manifest = read_manifest(tmp_path / "budget.onnx")  # params: what was asked; the nodes kept: what it led to
    assert manifest["params"]["excluded_nodes"] == [] and manifest["kept_nodes"] == result["excluded_nodes"]


def test_sensitivity_ranking_names_quantized_nodes(int8, exported, trained):
    calib = calibration.draw_for(trained[0], num=80, seed=0)
    ranking = quantize.rank_sensitive_nodes(onnx.load(exported), onnx.load(int8["onnx"]), calib.images[:16])
    names = {n.name for n in onnx.load(exported).graph.node}
    assert len(ranking) > 10 and all(name in names for name, _ in ranking)
    scores = [score for _, score in ranking]
    assert scores == sorted(scores, reverse=True)


def test_convert_goes_through_the_table_and_refuses_fp32(tmp_path):
    assert quantize.QUANTIZERS == {Precision.FP16: quantize.to_fp16, Precision.INT8: quantize.to_int8}
    with pytest.raises(EdgepipeError, match="no FP32 conversion"):
        quantize.convert("fp32", tmp_path / "model.onnx", tmp_path / "x.onnx")


def test_modelopt_failure_is_one_line_quoting_its_log(tmp_path):
    log = tmp_path / "modelopt.log"
    log.write_text("calibrating\n\nERROR: node /conv/Conv has no shape\n")
    error = modelopt_error("INT8 quantization", RuntimeError(), log)
    assert "\n" not in str(error)
    assert "INT8 quantization failed: RuntimeError (ERROR: node /conv/Conv has no shape)" in str(error)
    assert "first line" in str(modelopt_error("FP16 conversion", ValueError("first line\nsecond"), log))


def test_tensorrt_parser_fixes_name_the_quantize_command():
    assert "'edgepipe quantize --int8'" in _parser_fix("DequantizeLinear", "INT32 bias is not supported")
    assert "'edgepipe quantize --int8'" in _parser_fix("QuantizeLinear", "non-zero zero_point")


# --- TensorRT Q/DQ rules on hand-built graphs ------------------------------------------------------


def _qdq_conv(
    zero_point=0, weight_axis=0, weight_scale_len=4, act_scale_len=1, int32_bias=False, opset=17, conv="Conv"
):
    """input -> Q/DQ -> Conv(weight through Q/DQ, optional INT32-dequantized bias) -> output."""
    w_shape = [4, 2, 3, 3] if conv == "Conv" else [2, 4, 3, 3]
    inits = [
        numpy_helper.from_array(np.random.default_rng(0).standard_normal(w_shape).astype(np.float32), "w"),
        numpy_helper.from_array(np.full([act_scale_len] if act_scale_len > 1 else [], 0.1, np.float32), "x_scale"),
        numpy_helper.from_array(np.full([act_scale_len] if act_scale_len > 1 else [], zero_point, np.int8), "x_zp"),
        numpy_helper.from_array(np.full([weight_scale_len], 0.02, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros([weight_scale_len], np.int8), "w_zp"),
    ]
    nodes = [
        helper.make_node(
            "QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"], name="x_q", **({"axis": 1} if act_scale_len > 1 else {})
        ),
        helper.make_node(
            "DequantizeLinear",
            ["xq", "x_scale", "x_zp"],
            ["xdq"],
            name="x_dq",
            **({"axis": 1} if act_scale_len > 1 else {}),
        ),
        helper.make_node("QuantizeLinear", ["w", "w_scale", "w_zp"], ["wq"], name="w_q", axis=weight_axis),
        helper.make_node("DequantizeLinear", ["wq", "w_scale", "w_zp"], ["wdq"], name="w_dq", axis=weight_axis),
    ]
    conv_inputs = ["xdq", "wdq"]
    if int32_bias:
        inits += [
            numpy_helper.from_array(np.arange(4, dtype=np.int32), "b_int32"),
            numpy_helper.from_array(np.array(0.002, np.float32), "b_scale"),
        ]
        nodes.append(helper.make_node("DequantizeLinear", ["b_int32", "b_scale"], ["b"], name="bias_dq"))
        conv_inputs.append("b")
    nodes.append(helper.make_node(conv, conv_inputs, ["y"], name="conv", pads=[1, 1, 1, 1]))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_rules_accept_symmetric_per_channel_weights():
    quantize.check_tensorrt_qdq_rules(_qdq_conv())
    quantize.check_tensorrt_qdq_rules(_qdq_conv(conv="ConvTranspose", weight_axis=1))


def test_rules_reject_non_zero_zero_point():
    with pytest.raises(EdgepipeError, match="QuantizeLinear node 'x_q' has a non-zero zero point"):
        quantize.check_tensorrt_qdq_rules(_qdq_conv(zero_point=3))


def test_rules_reject_int32_bias_dequantize():
    with pytest.raises(EdgepipeError, match="'bias_dq' dequantizes an INT32 tensor"):
        quantize.check_tensorrt_qdq_rules(_qdq_conv(int32_bias=True))


def test_rules_reject_per_channel_activations():
    with pytest.raises(EdgepipeError, match="'x_q' quantizes an activation per channel"):
        quantize.check_tensorrt_qdq_rules(_qdq_conv(act_scale_len=2))


def test_rules_reject_weights_off_their_output_channel_axis():
    with pytest.raises(
        EdgepipeError, match="weight of Conv node 'conv' along axis 1; TensorRT needs its output-channel axis 0"
    ):
        quantize.check_tensorrt_qdq_rules(_qdq_conv(weight_axis=1, weight_scale_len=2))
    with pytest.raises(EdgepipeError, match="ConvTranspose node 'conv' along axis 0; .* axis 1"):
        quantize.check_tensorrt_qdq_rules(_qdq_conv(conv="ConvTranspose", weight_axis=0, weight_scale_len=2))


def test_rules_reject_old_opset():
    with pytest.raises(EdgepipeError, match="opset 12"):
        quantize.check_tensorrt_qdq_rules(_qdq_conv(opset=12))


# --- CLI -------------------------------------------------------------------------------------------


def test_quantize_cli_needs_exactly_one_precision(runner, exported, tmp_path):
    for flags in ((), ("--fp16", "--int8")):
        result = invoke(runner, "quantize", exported, *flags, "-o", tmp_path / "x.onnx")
        assert result.exit_code == 1 and "exactly one of --fp16 and --int8" in result.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_quantize_cli_int8_with_calibration_file(runner, exported, trained, tmp_path):
    calib = calibration.save(tmp_path / "calib.npz", calibration.draw_for(trained[0], num=128, seed=0))
    out = tmp_path / "m.int8.onnx"
    result = invoke(
        runner,
        "quantize",
        exported,
        "--int8",
        "--calib",
        calib,
        "--method",
        "max",
        "--high-precision",
        "fp32",
        "--json",
        "-o",
        out,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["precision"] == "int8" and report["method"] == "max" and report["high_precision"] == "fp32"
    assert abs(report["delta"]) <= 0.5 and out.is_file()


def test_quantize_cli_bad_calibration_files(runner, exported, tmp_path):
    (tmp_path / "corrupt.npz").write_bytes(b"not an npz")
    result = invoke(
        runner, "quantize", exported, "--int8", "--calib", tmp_path / "corrupt.npz", "-o", tmp_path / "x.onnx"
    )
    assert result.exit_code == 1 and "cannot read" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "x.onnx").exists()
