"""SmoothQuant for LayerNorm -> MatMul: the rewrite is exact in FP32, finds both LayerNorm forms, and helps INT8."""

import json

import numpy as np
import onnx
import pytest
from budget_models import OUTLIER_CHANNELS, export_outlier_recognizer, images
from conftest import invoke
from foreign_models import TEXT_SHAPE

from pipeline import quantize
from pipeline.artifacts import read_manifest
from pipeline.fidelity import relative_change
from pipeline.onnxinfo import run_onnxruntime
from pipeline.quantize.prepare import clean_up
from pipeline.quantize.ranges import collect
from pipeline.quantize.sensitivity import alone, rank_alone, without
from pipeline.quantize.smoothquant import find_sites, smooth, smoothing_scales


@pytest.fixture(scope="module")
def outlier(tmp_path_factory):
    """The recognizer whose attention LayerNorm has outlier channels (read by the classifier's MatMul), with data."""
    folder = tmp_path_factory.mktemp("smoothquant")
    model = export_outlier_recognizer(folder / "recognizer.onnx")
    np.savez(folder / "lines.npz", inputs=images(TEXT_SHAPE, 100, seed=3))
    np.savez(folder / "calib.npz", inputs=images(TEXT_SHAPE, 64, seed=4))
    return model


def _maxima(model: onnx.ModelProto, sites, x: np.ndarray) -> dict[str, np.ndarray]:
    histograms = collect(model, x, tensors=[s.tensor for s in sites], channels=[s.tensor for s in sites])
    return {name: h.channel_amax for name, h in histograms.items()}


@pytest.mark.parametrize("opset", [13, 17])
def test_rewrite_is_exact_in_fp32_and_flattens_the_outlier_channels(tmp_path, opset):
    # opset 17 exports LayerNormalization; 13 writes it as ReduceMean/Sub/Pow/Sqrt/Div/Mul/Add (as Paddle's do)
    model = onnx.load(str(export_outlier_recognizer(tmp_path / "r.onnx", opset=opset)))
    sites = find_sites(model)
    assert len(sites) == 1 and [r[0] for r in sites[0].readers] == [
        n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and n.input[0] == sites[0].tensor
    ]
    x = images(TEXT_SHAPE, 32, seed=5)
    before = _maxima(model, sites, x)[sites[0].tensor]
    assert before[:OUTLIER_CHANNELS].min() > 20 * np.median(before[OUTLIER_CHANNELS:])  # the outliers are there
    smoothed, spread = smooth(model, sites, {sites[0].tensor: before})
    onnx.checker.check_model(smoothed)
    assert len(smoothed.graph.node) == len(model.graph.node)  # folded into gamma/beta and the weight: no new node
    assert relative_change(run_onnxruntime(model, x), run_onnxruntime(smoothed, x)) < 1e-5
    after = _maxima(smoothed, sites, x)[sites[0].tensor]
    assert after.max() / np.median(after) < 0.2 * before.max() / np.median(before)
    assert spread[sites[0].tensor] == pytest.approx(before.max() / before[before > 0].min())


def test_smoothing_scales_follow_the_formula_and_leave_dead_channels_alone():
    x_max, w_max = np.array([4.0, 1.0, 0.0, 9.0]), np.array([1.0, 4.0, 2.0, 0.0])
    assert smoothing_scales(x_max, w_max, 0.5).tolist() == [2.0, 0.5, 1.0, 1.0]
    assert smoothing_scales(x_max, w_max, 1.0).tolist() == [4.0, 1.0, 1.0, 1.0]


def test_a_layernorm_read_by_anything_but_matmuls_is_left_alone(tmp_path):
    model = onnx.load(str(export_outlier_recognizer(tmp_path / "r.onnx")))
    site = find_sites(model)[0]
    model.graph.output.append(onnx.helper.make_tensor_value_info(site.tensor, onnx.TensorProto.FLOAT, None))
    assert find_sites(model) == []  # a graph output keeps its values


def test_smoothquant_lifts_int8_agreement_and_is_recorded(outlier, tmp_path):
    data, calib = outlier.parent / "lines.npz", outlier.parent / "calib.npz"
    common = {"data": str(data), "calib": str(calib), "max_drop": None, "method": "max", "bias_correction": False}
    plain = quantize.to_int8(outlier, tmp_path / "plain.onnx", smoothquant=False, **common)
    smoothed = quantize.to_int8(outlier, tmp_path / "smooth.onnx", smoothquant=True, **common)
    assert [row["method"] for row in plain["methods_tried"]] == ["max"]
    assert [row["method"] for row in smoothed["methods_tried"]] == ["max", "max+smoothquant"]
    assert smoothed["agreement"] > plain["agreement"] + 10
    record = smoothed["methods_tried"][1]["smoothquant"]
    assert record["tensors"] == 1 and record["alpha"] == 0.5 and record["relative_change"] < 1e-3
    assert read_manifest(tmp_path / "smooth.onnx")["methods_tried"][1]["smoothquant"] == record


def test_auto_tries_smoothquant_and_the_budget_search_starts_from_it(runner, outlier, tmp_path):
    data, calib = outlier.parent / "lines.npz", outlier.parent / "calib.npz"
    out = tmp_path / "auto.onnx"
    result = invoke(runner, "quantize", outlier, "--int8", "--data", data, "--calib", calib, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert any(row["method"].endswith("+smoothquant") for row in report["methods_tried"])
    kept = next(row for row in report["methods_tried"] if row["method"].endswith("+smoothquant"))
    assert report["agreement"] >= kept["agreement"] and report["agreement"] >= 97


# --- the ranking the budget search follows -----------------------------------------------------------------------


def test_each_node_alone_ranks_the_outlier_reader_first_and_without_all_is_fp32(outlier, tmp_path):
    data, calib = outlier.parent / "lines.npz", outlier.parent / "calib.npz"
    common = {"data": str(data), "calib": str(calib), "max_drop": None, "smoothquant": False}
    plain = quantize.to_int8(outlier, tmp_path / "plain.onnx", method="max", bias_correction=False, **common)
    x = images(TEXT_SHAPE, 8, seed=6)
    qdq, (fp32, _) = onnx.load(plain["onnx"]), clean_up(onnx.load(str(outlier)), x)  # the graph INT8 quantized
    ranking = rank_alone(fp32, qdq, x)
    scores = [score for _, score in ranking]
    assert len(ranking) >= 5 and scores == sorted(scores, reverse=True) and scores[-1] >= 0
    assert ranking[0][0] == "/classify/MatMul"  # it reads the LayerNorm's outlier channels
    reference = run_onnxruntime(fp32, x)
    int8_error = relative_change(reference, run_onnxruntime(qdq, x))
    everything = without(qdq, fp32, [name for name, _ in ranking])  # every ranked node back in FP32
    assert int8_error > 0.05 and relative_change(reference, run_onnxruntime(everything, x)) < 0.02 * int8_error
    one = alone(fp32, qdq, "/classify/MatMul")  # most of the damage is that one node's
    assert 0.3 * int8_error < relative_change(reference, run_onnxruntime(one, x)) <= int8_error
