"""INT8 ranges edgepipe chooses (percentile, MSE, TensorRT's entropy from one pass) and bias correction."""

import json

import numpy as np
import onnx
import pytest
import torch
from conftest import invoke, one_line_error
from foreign_models import _export, _seeded
from onnx import helper, numpy_helper
from torch import nn

from pipeline import quantize
from pipeline.errors import EdgepipeError
from pipeline.quantize import methods, ranges
from pipeline.quantize.bias import correct_bias
from pipeline.quantize.budget import Budget, default_budget
from pipeline.quantize.qdq_rules import check_tensorrt_qdq_rules

SHAPE = (3, 32, 32)


class HeavyTailed(nn.Module):
    """Conv, depthwise conv, conv, pooled to 10 logits: on Student-t inputs its activations have long tails."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.mix = nn.Conv2d(16, 16, 1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.depthwise(x))
        x = torch.relu(self.mix(x))
        return self.head(x.mean(dim=(2, 3)))


def heavy_images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_t(2.5, size=(count, *SHAPE)).astype(np.float32)


@pytest.fixture(scope="module")
def heavy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("heavy")
    path = _export(
        _seeded(HeavyTailed(), 0),
        folder / "heavy.onnx",
        (torch.randn(1, *SHAPE),),
        ["image"],
        ["logits"],
        {"image": {0: "batch"}, "logits": {0: "batch"}},
        17,
    )
    np.savez(folder / "images.npz", inputs=heavy_images(160))
    return path, folder / "images.npz"


def test_percentile_reads_the_hand_computed_value_of_a_known_histogram():
    counts = np.array([0.0, 90.0, 0.0, 9.0, 1.0])  # bins of width 0.5: [0, 0.5), [0.5, 1.0), ...
    # 90% of the values lie below 1.0, the top of bin 1; 95% lies 5/9 into bin 3 ([1.5, 2.0)).
    assert ranges.percentile_amax(counts, 0.5, 90.0, amax=2.5) == pytest.approx(1.0)
    assert ranges.percentile_amax(counts, 0.5, 95.0, amax=2.5) == pytest.approx(1.5 + 0.5 * 5 / 9)
    assert ranges.percentile_amax(counts, 0.5, 100.0, amax=2.3) == pytest.approx(2.3)  # never above the max seen


def test_histogram_widening_keeps_every_count_and_the_max():
    histogram = ranges.Histogram()
    histogram.add(np.zeros(100, np.float32))  # all zeros first: no width yet
    histogram.add(np.linspace(-1, 1, 5000, dtype=np.float32))
    histogram.add(np.array([37.5], np.float32))  # widens 64x: bins merged in pairs, six times
    assert histogram.total == 5101
    assert histogram.amax == pytest.approx(37.5)
    assert histogram.width * ranges.FINE_BINS >= 37.5
    assert histogram.counts[0] >= 100
    assert histogram.rebinned().sum() == pytest.approx(5101)


def test_methods_give_different_sensible_ranges_on_heavy_tails():
    values = np.random.default_rng(1).standard_t(3, size=400_000).astype(np.float32)
    histogram = ranges.Histogram()
    for chunk in np.array_split(values, 8):
        histogram.add(chunk)
    amax = {name: ranges.amax_of(histogram, ranges.parse_method(name)) for name in ranges.HISTOGRAM_METHODS}
    magnitudes = np.abs(values)
    assert amax["max"] == pytest.approx(magnitudes.max())
    for p in ranges.PERCENTILES:  # against numpy's percentile of the values themselves
        assert amax[f"percentile-{p:g}"] == pytest.approx(np.percentile(magnitudes, p), rel=0.02)
    assert amax["percentile-99.9"] < amax["percentile-99.99"] < amax["percentile-99.999"] < amax["max"]
    assert amax["percentile-99.9"] < amax["trt-entropy"] < amax["max"]
    assert amax["percentile-99.9"] < amax["mse"] < amax["max"]
    assert len({round(v, 3) for v in amax.values()}) == len(amax)


def test_trt_entropy_matches_nvidias_reference_implementation():
    from modelopt.torch.quantization.calib.histogram import _compute_amax_entropy

    magnitudes = np.abs(np.random.default_rng(2).standard_t(3, size=100_000))
    counts, edges = np.histogram(magnitudes, bins=384, range=(0, magnitudes.max()))
    reference = float(_compute_amax_entropy(counts.copy(), edges, 8, False, 1, 128))
    assert ranges.entropy_amax(counts.astype(float), edges[1] - edges[0]) == pytest.approx(reference, rel=1e-6)


@pytest.mark.parametrize("text", ["kl", "percentile-0", "percentile-100.5", "percentile-x"])
def test_bad_methods_are_one_line(text):
    with pytest.raises(EdgepipeError) as error:
        ranges.parse_method(text)
    assert "\n" not in str(error.value) and error.value.fix


def test_named_methods_parse():
    assert ranges.parse_method("percentile-99.990").name == "percentile-99.99"
    assert ranges.parse_method("percentile-100").percentile == 100.0
    assert ranges.parse_method("entropy").kind == "modelopt"


def test_too_few_values_for_a_histogram_leave_auto_max_alone_and_stop_a_named_method():
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 1, 4, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 1, 4, 4])
    weight = numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="conv")
    graph = helper.make_graph([conv], "tiny", [x], [y], initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    images = np.ones((2, 1, 4, 4), np.float32)  # 32 values for 2048 bins
    histograms = ranges.collect(model, images)
    assert "fewer values (32)" in ranges.too_few_values(histograms, len(images))
    assert ranges.too_few_values(ranges.collect(model, np.ones((200, 1, 4, 4), np.float32)), 200) is None
    auto, named = ranges.parse_method("auto"), ranges.parse_method("mse")
    too_few = ranges.too_few_values(histograms, len(images))
    assert methods.usable_methods(["max", "mse", "trt-entropy"], too_few, auto) == ["max"]
    with pytest.raises(EdgepipeError, match="fewer values") as error:
        methods.usable_methods(["mse"], too_few, named)
    assert "--calib" in error.value.fix


def test_injected_ranges_reach_the_qdq_model_and_max_equals_modelopts(heavy, tmp_path):
    from modelopt.onnx.quantization import quantize as modelopt_quantize

    path, images = heavy
    x = np.load(images)["inputs"]
    result = quantize.to_int8(
        path, tmp_path / "p.onnx", calib=str(images), method="percentile-99.9", high_precision="fp32"
    )
    model = onnx.load(str(tmp_path / "p.onnx"))
    scales = _activation_scales(model)
    histograms = ranges.collect(onnx.load(str(path)), x)
    expected = ranges.amax_of(histograms["image"], ranges.parse_method("percentile-99.9")) / 127
    assert scales["image_scale"] == pytest.approx(expected, rel=1e-3)
    assert result["method"] == "percentile-99.9" and [row["method"] for row in result["methods_tried"]] == [
        "percentile-99.9"
    ]
    quantize.to_int8(path, tmp_path / "m.onnx", calib=str(images), method="max", high_precision="fp32")
    ours = _activation_scales(onnx.load(str(tmp_path / "m.onnx")))
    modelopt_quantize(
        str(path),
        quantize_mode="int8",
        calibration_data=x,
        calibration_method="max",
        calibration_eps=["cpu"],
        op_types_to_exclude=["Sigmoid", "Softmax"],
        output_path=str(tmp_path / "modelopt.onnx"),
        log_level="ERROR",
        high_precision_dtype="fp32",
    )
    theirs = _activation_scales(onnx.load(str(tmp_path / "modelopt.onnx")))
    assert set(ours) == set(theirs)
    for name in theirs:
        assert ours[name] == pytest.approx(theirs[name], rel=1e-3), name


def _activation_scales(model: onnx.ModelProto) -> dict[str, float]:
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {
        n.input[1]: float(init[n.input[1]])
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] not in init and n.input[1] in init
    }


def test_auto_tries_every_candidate_keeps_the_best_and_records_them(heavy, tmp_path):
    path, images = heavy
    result = quantize.to_int8(path, tmp_path / "a.onnx", calib=str(images), data=str(images))
    rows = result["methods_tried"]
    assert [row["method"] for row in rows[:4]] == list(ranges.AUTO_CANDIDATES)
    assert rows[4]["method"].endswith("+bias")
    for row in rows:
        assert 0 <= row["agreement"] <= 100 and row["seconds"] >= 0 and row["int8_share"] is not None
    best = max(rows[:4], key=lambda row: (row["agreement"], row["cosine"]))
    assert result["method"] in (best["method"], best["method"] + "+bias")
    manifest = json.loads((tmp_path / "a.onnx.manifest.json").read_text())
    assert manifest["methods_tried"] == rows and manifest["params"]["method"] == "auto"


def test_bias_correction_lowers_mean_output_error(heavy, tmp_path):
    from pipeline.quantize.bias import _channel_means  # the per-channel means bias correction measures

    path, images = heavy
    x = np.load(images)["inputs"]
    quantize.to_int8(path, tmp_path / "clipped.onnx", calib=str(images), method="percentile-99")  # clips: biased
    fp32, qdq = onnx.load(str(path)), onnx.load(str(tmp_path / "clipped.onnx"))
    corrected = correct_bias(fp32, qdq, x)
    check_tensorrt_qdq_rules(corrected)
    held_out = heavy_images(64, seed=7)
    convs = [node.output[0] for node in fp32.graph.node if node.op_type == "Conv"]
    reference = _channel_means(fp32, convs, held_out)
    for name, before, after in zip(
        convs, _channel_means(qdq, convs, held_out).values(), _channel_means(corrected, convs, held_out).values()
    ):
        shift_before, shift_after = np.abs(before - reference[name]).mean(), np.abs(after - reference[name]).mean()
        assert shift_after < max(0.8 * shift_before, 0.005), name
    logits = _run(fp32, held_out)
    assert np.abs(_run(corrected, held_out) - logits).mean() < np.abs(_run(qdq, held_out) - logits).mean()


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("method", ["kl", "percentile-0", "percentile-101"])
def test_cli_bad_method_writes_nothing(runner, heavy, tmp_path, method):
    path, images = heavy
    out = tmp_path / "bad.onnx"
    result = invoke(runner, "quantize", path, "--int8", "--calib", images, "--method", method, "-o", out)
    assert "Fix: " in one_line_error(result, method.split("-")[0])
    assert not out.exists() and not list(tmp_path.iterdir())


class HeavyMap(HeavyTailed):
    """The same layers without the pooled head: a 16-channel feature map, neither classes nor a sequence."""

    def forward(self, x):
        x = torch.relu(self.stem(x))
        return self.mix(torch.relu(self.depthwise(x)))


def test_without_a_budget_maps_keep_a_cosine_and_classes_an_agreement(heavy, tmp_path):
    path, images = heavy
    maps = _export(
        _seeded(HeavyMap(), 0),
        tmp_path / "map.onnx",
        (torch.randn(1, *SHAPE),),
        ["image"],
        ["features"],
        {"image": {0: "batch"}, "features": {0: "batch"}},
        17,
    )
    # plain PTQ of this map misses the default cosine 0.99 (checked at 0.995, half its error): its depthwise Conv goes
    # out of INT8 first, then the search, whose best reaches 0.99 but not the margin: kept, as it meets the budget
    kept = quantize.to_int8(maps, tmp_path / "kept.int8.onnx", calib=str(images), method="max")
    assert kept["min_cosine"] == 0.99 and kept["checked_cosine"] == pytest.approx(0.995)
    assert kept["attempts"][0]["cosine"] < 0.99 <= min(o["cosine"] for o in kept["outputs"].values()) < 0.995
    assert "re-quantized" in [row["how"] for row in kept["attempts"]]
    assert [row["how"] for row in kept["attempts"]][:2] == ["plain", "depthwise in higher precision"]
    assert kept["attempts"][1]["kept_nodes"][0] in kept["kept_nodes"]
    # with mse ranges plain PTQ meets 0.99 but not the margin: the search keeps nodes out until 0.995 holds
    margin = quantize.to_int8(maps, tmp_path / "margin.int8.onnx", calib=str(images), method="mse")
    assert 0.99 <= margin["attempts"][0]["cosine"] < 0.995 and margin["attempts"][-1]["how"] == "re-quantized"
    assert min(o["cosine"] for o in margin["outputs"].values()) >= 0.995 and margin["kept_nodes"]
    # a cosine nothing reaches is never written silently
    with pytest.raises(EdgepipeError, match=r"cannot meet the budget \(cosine at least 0.99999 with FP32") as error:
        quantize.to_int8(maps, tmp_path / "map.int8.onnx", calib=str(images), method="max", min_cosine=0.99999)
    assert "the best reached was" in str(error.value) and not (tmp_path / "map.int8.onnx").exists()
    result = quantize.to_int8(maps, tmp_path / "map.int8.onnx", calib=str(images), method="max", min_cosine=0.9)
    assert result["min_cosine"] == 0.9 and result["max_drop"] is None and result["min_agreement"] is None
    assert "checked_cosine" not in result  # a budget given is checked as given
    assert min(o["cosine"] for o in result["outputs"].values()) >= 0.9
    manifest = json.loads((tmp_path / "map.int8.onnx.manifest.json").read_text())
    assert manifest["params"]["min_cosine"] == 0.9
    classes = quantize.to_int8(path, tmp_path / "c.onnx", calib=str(images), method="max")
    assert classes["min_agreement"] == 97.0 and classes["agreement"] >= 97.0
    plain = quantize.to_int8(path, tmp_path / "p.onnx", calib=str(images), method="max", max_drop=None)
    assert plain["min_agreement"] is None and plain["min_cosine"] is None and plain["attempts"][0]["how"] == "plain"


def test_cli_min_cosine_must_be_a_cosine(runner, heavy, tmp_path):
    path, images = heavy
    out = tmp_path / "bad.onnx"
    result = invoke(runner, "quantize", path, "--int8", "--calib", images, "--min-cosine", "2", "-o", out)
    one_line_error(result, "--min-cosine")
    assert not out.exists()


def test_the_default_map_budget_is_checked_with_half_its_error():
    default, _ = default_budget("map", labelled=False)
    given = Budget(min_cosine=0.99)
    figures = {"agreement": 100.0, "outputs": {"map": {"cosine": 0.993}}}
    assert given.met(figures) and not default.met(figures)
    assert default.shortfall(figures) == pytest.approx(0.2)  # points of cosine below 0.995
    assert default.met({**figures, "outputs": {"map": {"cosine": 0.996}}})
    assert "0.995 on the check images" in default.text() and "check images" not in given.text()
