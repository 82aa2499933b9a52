"""DeepStream and Triton configs, and the graph changes behind them, proven on ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from google.protobuf import text_format

from pipeline.deploy import deepstream, fold, triton
from pipeline.deploy.model import read_model
from pipeline.errors import EdgepipeError
from pipeline.onnxinfo import run_onnxruntime
from pipeline.precision import Precision
from tests.deploy_models import CLASSES, classifier


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return classifier(tmp_path_factory.mktemp("deploy"))


def _pixels(seed=0, batch=4, channels=3, size=32):
    return np.random.default_rng(seed).integers(0, 256, (batch, channels, size, size)).astype(np.uint8)


def test_read_model_takes_preprocessing_and_classes_from_the_onnx(model_path):
    model = read_model(model_path)
    assert model.class_names == CLASSES and model.is_classifier
    assert model.preprocess.crop == (32, 32) and model.preprocess.mean == (0.485, 0.456, 0.406)
    assert model.batch is None and model.sample_shape == (3, 32, 32) and model.precision == Precision.FP32


def test_folded_model_on_nvinfer_arithmetic_equals_the_original_on_normalized_input(model_path):
    model = read_model(model_path)
    proto = onnx.load(str(model_path))
    folded = fold.fold_normalization(proto, model.preprocess)
    onnx.checker.check_model(folded)
    pixels = _pixels()
    scale = fold.scaling(model.preprocess, folded=True)
    assert scale.net_scale_factor == 1 / 255 and scale.offsets == (0.0, 0.0, 0.0)
    nvinfer_input = (np.float32(scale.net_scale_factor) * (pixels.astype(np.float32) - 0)).astype(np.float32)
    reference = run_onnxruntime(proto, model.preprocess.scale(pixels))["logits"]
    got = run_onnxruntime(folded, nvinfer_input)["logits"]
    diff = float(np.max(np.abs(got - reference)))
    assert diff <= 1e-5, diff
    assert np.array_equal(got.argmax(1), reference.argmax(1))


def test_softmax_head_is_the_softmax_of_the_original_logits(model_path):
    proto = onnx.load(str(model_path))
    headed = fold.with_softmax(proto)
    x = read_model(model_path).preprocess.scale(_pixels(seed=1))
    logits = run_onnxruntime(proto, x)["logits"].astype(np.float64)
    probabilities = run_onnxruntime(headed, x)[fold.SOFTMAX_OUTPUT]
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    assert np.max(np.abs(probabilities - expected)) <= 1e-6
    assert fold.ends_in_softmax(headed) and len(fold.with_softmax(headed).graph.node) == len(headed.graph.node)


def test_unfolded_scaling_states_its_cost():
    from pipeline.preprocess import Preprocess

    scale = fold.scaling(Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)), folded=False)
    assert scale.offsets == pytest.approx((123.675, 116.28, 103.53))
    assert scale.net_scale_factor == pytest.approx(1 / (255 * 0.226))
    assert scale.max_scale_error == pytest.approx(0.226 / 0.224 * 0 + abs(0.229 / 0.226 - 1), rel=1e-6)
    assert "1.33%" in scale.note()


@pytest.mark.parametrize("precision", [Precision.FP32, Precision.FP16, Precision.INT8])
def test_nvinfer_config_uses_only_parser_keys_and_matches_the_model(model_path, precision):
    model = read_model(model_path)
    files = deepstream.NvinferFiles("model.onnx", "model.engine", "labels_deepstream.txt")
    text = deepstream.nvinfer_config(model, precision, files, fold.scaling(model.preprocess, folded=True))
    values = deepstream.parse_config(text)
    assert set(values) <= deepstream.NVINFER_KEYS, set(values) - deepstream.NVINFER_KEYS
    assert values["network-mode"] == str({Precision.FP32: 0, Precision.INT8: 1, Precision.FP16: 2}[precision])
    assert values["model-engine-file"] == "model.engine" and values["network-type"] == "1"
    assert values["model-color-format"] == "0" and values["offsets"] == "0;0;0"
    assert float(values["net-scale-factor"]) == 1 / 255
    assert ("onnx-file" in values) == (precision != Precision.INT8)  # no silent FP16 rebuild of a Q/DQ model
    assert "no centre crop" in text


def test_labels_are_one_attribute_of_n_classes():
    line = deepstream.labels_line(CLASSES)
    assert line.count("\n") == 1 and line.strip().split(";") == list(CLASSES)


def test_grayscale_and_bgr_color_formats(tmp_path):
    gray = read_model(classifier(tmp_path, "gray.onnx", channels=1))
    bgr = read_model(classifier(tmp_path, "bgr.onnx", channel_order="bgr"))
    files = deepstream.NvinferFiles("m.onnx", "m.engine", None)
    for model, expected in ((gray, "2"), (bgr, "1")):
        text = deepstream.nvinfer_config(model, Precision.FP32, files, fold.scaling(model.preprocess, True))
        assert deepstream.parse_config(text)["model-color-format"] == expected


def test_triton_config_parses_with_tritons_protobuf(model_path):
    from tritonclient.grpc import model_config_pb2

    model = read_model(model_path)
    text = triton.config_pbtxt("tiny_fp32", model, profile_max=16)
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 16
    assert [i.name for i in config.input] == ["input"] and list(config.input[0].dims) == [3, 32, 32]
    assert config.input[0].data_type == model_config_pb2.TYPE_FP32
    assert [o.name for o in config.output] == ["logits"] and list(config.output[0].dims) == [len(CLASSES)]
    assert config.output[0].label_filename == "labels.txt"
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16]


def test_triton_static_batch_has_no_batching(tmp_path):
    from tritonclient.grpc import model_config_pb2

    model = read_model(classifier(tmp_path, "static.onnx", dynamic_batch=False))
    config = text_format.Parse(triton.config_pbtxt("s", model, 1), model_config_pb2.ModelConfig())
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [1, 3, 32, 32]
    assert not config.HasField("dynamic_batching")


def test_triton_max_batch_above_the_profile_is_refused(model_path):
    with pytest.raises(EdgepipeError, match="above the engine's profile") as error:
        triton.config_pbtxt("tiny", read_model(model_path), profile_max=8, max_batch=32)
    assert "Fix:" in str(error.value) and "\n" not in str(error.value)


def test_targets_table_follows_each_tensorrt_version():
    from pipeline.deploy import targets

    t = targets.TARGETS
    assert "--stronglyTyped" not in t["jp5"].flags and "--stronglyTyped" in t["jp6"].flags
    assert not {"--fp16", "--int8", "--calib", "--best"} & t["trt11"].flags
    assert "--workspace" in t["jp5"].flags and "--workspace" not in t["jp6"].flags  # removed in 10.x
    assert t["rtx"].binary == "tensorrt_rtx" and not {"--fp16", "--useDLACore"} & t["rtx"].flags
    assert t["jp6"].dla and t["jp5"].dla and not t["jp7"].dla
    assert targets.build_flags(t["jp5"], Precision.FP16) == ["--fp16"]
    assert targets.build_flags(t["trt11"], Precision.INT8) == []
    assert targets.build_flags(t["jp6"], Precision.FP16, dla=True) == ["--fp16", "--useDLACore=0", "--allowGPUFallback"]
    for name, target in t.items():
        for precision in target.precisions:
            assert set(targets.build_flags(target, precision)) <= target.flags, name
    with pytest.raises(EdgepipeError, match="calibration cache"):
        t["jp5"].check(Precision.INT8)
    with pytest.raises(EdgepipeError, match="DLA builds FP16"):
        t["jp6"].check(Precision.INT8, dla=True)
