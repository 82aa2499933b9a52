"""Any single-image-input ONNX through `quantize` and `build-engine`: models edgepipe did not export.

The models are exported here from torch modules outside the zoo (tests/foreign_models.py,
tests/budget_models.py), without edgepipe metadata: opset 11/12, dynamic H/W, NHWC input, two
outputs, H and W sharing one name, two inputs, a CRNN-like text recognizer. Engines are built
for real with TensorRT-RTX ahead of time (compute capability 8.9), which needs no GPU.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from budget_models import CLASSIFIER_SHAPE, export_outlier_recognizer, export_varied_classifier, images
from click.testing import CliRunner
from conftest import one_line_error
from foreign_models import TEXT_CLASSES, TEXT_SHAPE, foreign_model

from pipeline import quantize
from pipeline.artifacts import read_manifest
from pipeline.cli import main
from pipeline.commands.build import build_engine_main
from pipeline.commands.quantize import _print_result
from pipeline.errors import EdgepipeError
from pipeline.onnxinfo import run_onnxruntime
from pipeline.quantize.graph import quantized_nodes
from pipeline.tensorrt import backend

TARGET = ("--computeCapability", "8.9")
needs_rtx = pytest.mark.skipif(
    "tensorrt-rtx" not in backend.installed_backends(), reason="TensorRT-RTX is not installed"
)


def copy_of(kind: str, folder: Path, **options) -> Path:
    """A private copy of a foreign model (engines and converted models are written beside it)."""
    path = folder / f"{kind}.onnx"
    shutil.copyfile(foreign_model(kind, **options), path)
    return path


def run(*args, command=main):
    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)


def made_files(folder: Path, *sources: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p not in sources)


@pytest.fixture(scope="module")
def recognizer(tmp_path_factory):
    """The text recognizer with outlier LayerNorm channels, 100 unlabelled text-line inputs and 64 calibration inputs."""
    folder = tmp_path_factory.mktemp("recognizer")
    model = export_outlier_recognizer(folder / "recognizer.onnx")
    np.savez(folder / "lines.npz", inputs=images(TEXT_SHAPE, 100, seed=3))
    np.savez(folder / "calib.npz", inputs=images(TEXT_SHAPE, 64, seed=4))
    return model


# --- FP16 with no data ------------------------------------------------------------------------------------


@needs_rtx
def test_build_engine_fp16_works_as_typed_on_an_opset_11_model(tmp_path):
    model = copy_of("se_classifier", tmp_path, opset=11)
    result = run(model, "--fp16", *TARGET, command=build_engine_main)
    assert result.exit_code == 0, result.output
    assert "upgraded to 17 with onnx's version converter, proven unchanged on 8 synthetic inputs" in result.stderr
    assert "FP16 is checked against FP32 on 32 synthetic inputs (seeded); pass --data for your images" in result.stderr
    assert "FP16 checked against FP32 on 32 synthetic inputs" in result.stdout and "agreement 100.00%" in result.stdout
    engine = tmp_path / "se_classifier.fp16.engine"
    check = read_manifest(engine)["precision_check"]
    assert check["on"] == "32 synthetic inputs (seeded)" and check["samples"] == 32 and check["max_abs_diff"] < 0.05
    converted = read_manifest(tmp_path / "se_classifier.fp16.onnx")
    assert converted["check"]["on"] == "synthetic" and converted["opset_upgrade"]["from"] == 11
    assert onnx.load(str(tmp_path / "se_classifier.fp16.onnx")).opset_import[0].version >= 17
    again = run(model, "--fp16", *TARGET, command=build_engine_main)
    assert (
        again.exit_code == 0
        and "up to date" in again.stdout
        and "checked against FP32 on 32 synthetic inputs" in again.stdout
    )


def test_quantize_fp16_compares_every_output_of_a_two_output_nhwc_model(tmp_path):
    nhwc = quantize.to_fp16(foreign_model("se_classifier", nhwc=True), tmp_path / "nhwc.fp16.onnx")
    assert nhwc["agreement"] == 100.0 and nhwc["cosine"] > 0.999
    assert read_manifest(tmp_path / "nhwc.fp16.onnx")["params"]["input_shape"] == [1, 224, 224, 3]
    two = run("quantize", foreign_model("two_output"), "--fp16", "-o", tmp_path / "two.fp16.onnx", "--json")
    assert two.exit_code == 0, two.output
    report = json.loads(two.stdout)
    assert set(report["outputs"]) == {"logits", "embedding"} and report["outputs"]["embedding"]["shape"] == [32]
    assert (
        all(o["cosine"] > 0.999 for o in report["outputs"].values())
        and report["agreement"] == report["outputs"]["logits"]["argmax_agreement"]
    )
    assert report["check"]["text"] == "32 synthetic inputs (seeded)"


def test_fp16_on_the_users_images_instead_of_synthetic_inputs(tmp_path, recognizer):
    result = run(
        "quantize", recognizer, "--fp16", "--data", recognizer.parent / "lines.npz", "-o", tmp_path / "r.fp16.onnx"
    )
    assert result.exit_code == 0, result.output
    assert "on 20 held-out images of lines.npz" in result.stdout and "synthetic" not in result.output


# --- dynamic height/width, shared names, several inputs, bad shapes ------------------------------------------------


def test_dynamic_hw_runs_at_one_fixed_size(tmp_path):
    model = foreign_model("se_classifier", dynamic_hw=True)
    asked = run("quantize", model, "--fp16", "-o", tmp_path / "x.onnx")
    one_line_error(asked, "dynamic height/width", "--input-size 224x224")
    result = quantize.to_fp16(model, tmp_path / "dyn.fp16.onnx", size=(160, 192))
    assert (
        read_manifest(tmp_path / "dyn.fp16.onnx")["params"]["input_shape"] == [1, 3, 160, 192]
        and result["samples"] == 32
    )
    converted = onnx.load(str(tmp_path / "dyn.fp16.onnx"))
    assert [d.dim_param for d in converted.graph.input[0].type.tensor_type.shape.dim][2:] == [
        "height",
        "width",
    ]  # still dynamic


@needs_rtx
def test_build_engine_converts_a_dynamic_model_at_its_opt_shape(tmp_path):
    model = copy_of("se_classifier", tmp_path, dynamic_hw=True)
    shapes = (
        "--minShapes",
        "image:1x3x160x160",
        "--optShapes",
        "image:4x3x192x224",
        "--maxShapes",
        "image:8x3x320x320",
    )
    result = run(model, "--fp16", *shapes, *TARGET, "--json", command=build_engine_main)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["check"]["on"] == "32 synthetic inputs (seeded)"
    assert read_manifest(tmp_path / "se_classifier.fp16.onnx")["params"]["input_shape"] == [1, 3, 192, 224]
    missing = run(
        copy_of("se_classifier", tmp_path, dynamic_hw=True),
        "--fp16",
        *TARGET,
        "--saveEngine",
        tmp_path / "none.engine",
        command=build_engine_main,
    )
    one_line_error(missing, "dynamic dimensions besides the batch", "--optShapes image:1x3x224x224")


@needs_rtx
@pytest.mark.parametrize(
    "flags, needles",
    [
        (
            (
                "--minShapes",
                "image:1x3x160x128",
                "--optShapes",
                "image:4x3x192x160",
                "--maxShapes",
                "image:8x3x320x256",
            ),
            ("one symbol 'size', so TensorRT requires them equal", "pass equal height and width"),
        ),
        (
            ("--optShapes", "picture:1x3x224x224"),
            ("--optShapes names input 'picture', which the model does not have (inputs: image)",),
        ),
    ],
)
def test_bad_shapes_for_build_engine(tmp_path, flags, needles):
    model = copy_of("shared_hw", tmp_path)
    one_line_error(run(model, "--fp16", *flags, *TARGET, command=build_engine_main), *needles)
    assert made_files(tmp_path, model) == []


def test_several_inputs_are_named_and_refused(tmp_path):
    model = copy_of("two_input", tmp_path)
    one_line_error(run("quantize", model, "--fp16", "-o", tmp_path / "x.onnx"), "2 inputs: 'image'", "'class_prior'")
    if "tensorrt-rtx" in backend.installed_backends():
        one_line_error(run(model, "--fp16", *TARGET, command=build_engine_main), "2 inputs: 'image'", "'class_prior'")
    assert made_files(tmp_path, model) == []


# --- INT8: calibration data, checks, bad input -----------------------------------------------------------


def test_int8_without_calibration_data_is_one_clear_error(tmp_path):
    model = copy_of("text_recognizer", tmp_path)
    one_line_error(
        run("quantize", model, "--int8", "-o", tmp_path / "x.onnx"),
        "--int8 needs calibration images",
        "never calibrates on random data",
    )
    if "tensorrt-rtx" in backend.installed_backends():
        one_line_error(run(model, "--int8", *TARGET, command=build_engine_main), "--int8 needs calibration images")
    assert made_files(tmp_path, model) == []


def test_bad_calibration_and_data_for_a_budget(tmp_path, recognizer):
    folder = recognizer.parent
    np.savez(tmp_path / "wrong.npz", inputs=images((1, 32, 96), 64))
    wrong = run("quantize", recognizer, "--int8", "--calib", tmp_path / "wrong.npz", "-o", tmp_path / "x.onnx")
    one_line_error(wrong, "--calib holds images of shape 1 x 32 x 96", "takes 1 x 32 x 128")
    unlabelled = run(
        "quantize", recognizer, "--int8", "--calib", folder / "calib.npz", "--max-drop", "1", "-o", tmp_path / "x.onnx"
    )
    one_line_error(unlabelled, "--max-drop measures top-1 against labels", "use --min-agreement")
    for flags, needle in (
        (("--min-agreement", "101"), "not a percentage"),
        (("--input-size", "big"), "is not a size in the format [C x] H x W"),
    ):
        one_line_error(
            run("quantize", recognizer, "--int8", "--calib", folder / "calib.npz", *flags, "-o", tmp_path / "x.onnx"),
            needle,
        )
    assert made_files(tmp_path, tmp_path / "wrong.npz") == []


def test_int8_of_an_opset_12_model_with_a_plain_npz(tmp_path, recognizer):
    model = foreign_model("text_recognizer", opset=12)
    result = quantize.to_int8(model, tmp_path / "r12.int8.onnx", calib=recognizer.parent / "calib.npz", max_drop=None)
    assert result["opset_upgrade"]["from"] == 12 and result["opset_upgrade"]["proven_on"] == "8 calibration images"
    assert result["check"]["on"] == "calibration" and result["check"]["hint"] == "pass --data for held-out images"
    assert result["calibration"]["count"] == 64 and result["macs"]["int8_share"] == 100.0
    opset17 = quantize.count_macs(
        onnx.load(str(foreign_model("text_recognizer"))), (1, *TEXT_SHAPE)
    )  # the same network
    assert len(opset17) == 9 and result["macs"]["total"] == sum(opset17.values())
    quantize.check_tensorrt_qdq_rules(onnx.load(str(tmp_path / "r12.int8.onnx")))


@needs_rtx
def test_build_engine_int8_of_a_dynamic_model_calibrated_at_the_images_size(tmp_path):
    model = copy_of("se_classifier", tmp_path, dynamic_hw=True)
    np.savez(tmp_path / "calib.npz", inputs=images((3, 96, 128), 64, seed=1))
    shapes = ("--minShapes", "image:1x3x96x96", "--optShapes", "image:1x3x96x128", "--maxShapes", "image:4x3x160x160")
    result = run(
        model, "--int8", "--calib", tmp_path / "calib.npz", *shapes, *TARGET, "--json", command=build_engine_main
    )
    assert result.exit_code == 0, result.output
    check = json.loads(result.stdout)["check"]
    assert check["on"] == "the 64 calibration images from calib.npz" and check["macs"]["int8_share"] > 90
    assert read_manifest(tmp_path / "se_classifier.int8.onnx")["params"]["input_shape"] == [1, 3, 96, 128]


# --- INT8 accuracy budgets --------------------------------------------------------------------------------


def test_min_agreement_recovers_a_collapsed_text_recognizer(tmp_path, recognizer, capsys):
    """Plain PTQ (bias correction included) agrees with FP32 at under 25% of the positions; one node kept in higher
    precision brings it back (without SmoothQuant, which would fix the outlier channels before any search)."""
    result = run(
        "quantize",
        recognizer,
        "--int8",
        "--no-smoothquant",
        "--data",
        recognizer.parent / "lines.npz",
        "--min-agreement",
        "85",
        "--json",
        "-o",
        tmp_path / "r.int8.onnx",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["attempts"][0]["how"] == "plain" and report["attempts"][0]["agreement"] < 25
    hows = [row["how"] for row in report["attempts"]]
    assert hows[:2] == ["plain", "ceiling"] and set(hows[2:]) == {"prefix check", "re-quantized"}
    assert 1 <= hows.count("re-quantized") <= 3 and report["attempts"][-1]["how"] == "re-quantized"
    assert report["agreement"] >= 85 and "/classify/MatMul" in report["kept_nodes"] and report["kept_op_types"] == []
    assert report["macs"]["int8_share"] > 90 and report["check"]["text"] == "20 held-out images of lines.npz"
    kept_row = next(row for row in report["macs"]["out_of_int8"] if row["node"] == "/classify/MatMul")
    assert kept_row["why"] == "kept in higher precision by the accuracy budget"
    manifest = read_manifest(tmp_path / "r.int8.onnx")
    assert (
        manifest["kept_nodes"] == report["kept_nodes"]
        and manifest["macs"] == report["macs"]
        and manifest["params"]["min_agreement"] == 85
    )
    model = onnx.load(str(tmp_path / "r.int8.onnx"))
    quantize.check_tensorrt_qdq_rules(model)
    assert "/classify/MatMul" not in quantized_nodes(model) and "/attention/qkv/MatMul" in quantized_nodes(model)
    # a real PTQ graph of the nodes it excludes: every QuantizeLinear is read
    readers = {name for node in model.graph.node for name in node.input}
    assert all(q.output[0] in readers for q in model.graph.node if q.op_type == "QuantizeLinear")
    _print_result(report)
    assert "kept in higher precision: " in capsys.readouterr().out


def test_a_budget_the_high_precision_remainder_alone_misses_is_refused_before_any_search(tmp_path, recognizer):
    result = run(
        "quantize",
        recognizer,
        "--int8",
        "--data",
        recognizer.parent / "lines.npz",
        "--min-agreement",
        "99.9",
        "-o",
        tmp_path / "r.int8.onnx",
    )
    one_line_error(
        result,
        "INT8 cannot meet the budget (at least 99.9% argmax agreement with FP32): with no Q/DQ at all the "
        "high-precision remainder alone gives agreement",
        "--high-precision fp32",
        "nothing was written",
    )
    assert not list(tmp_path.iterdir())


def test_max_drop_on_labelled_images_of_a_classifier(tmp_path):
    model = export_varied_classifier(tmp_path / "classifier.onnx")
    x = images(CLASSIFIER_SHAPE, 80, seed=5)
    y = run_onnxruntime(model, x)["logits"].argmax(-1)  # the FP32 model's own predictions as labels: FP32 top-1 100%
    np.savez(tmp_path / "photos.npz", inputs=x, y=y)  # model inputs, fed as they are
    result = quantize.to_int8(model, tmp_path / "c.int8.onnx", data=tmp_path / "photos.npz", max_drop=10)
    assert result["reference_top1"] == 100.0 and -result["delta"] <= 10 and result["samples"] == 16
    assert (
        result["calibration"]["count"] == 64
        and result["calibration"]["source"] == "drawn from the calibration pool of photos.npz"
    )
    assert len(np.unique(y)) >= 5


# --- what runs in INT8 ------------------------------------------------------------------------------------


def test_macs_are_counted_from_inferred_or_measured_shapes():
    macs = quantize.count_macs(onnx.load(str(foreign_model("se_classifier"))), (1, 3, 224, 224))
    assert macs["/stem/stem.0/Conv"] == 16 * 112 * 112 * 3 * 3 * 3 and macs["/head/Gemm"] == 64 * 10
    nhwc = quantize.count_macs(onnx.load(str(foreign_model("se_classifier", nhwc=True))), (1, 224, 224, 3))
    assert sum(nhwc.values()) == sum(macs.values())
    recognizer = quantize.count_macs(onnx.load(str(foreign_model("text_recognizer"))), (1, *TEXT_SHAPE))
    assert recognizer["/attention/MatMul"] == 4 * 32 * 32 * 32  # heads x T x T x head_dim
    # at opset 11 shape inference loses the attention's and classifier's shapes: one ONNX Runtime run measures them
    opset11 = quantize.count_macs(onnx.load(str(foreign_model("text_recognizer", opset=11))), (1, *TEXT_SHAPE))
    assert opset11 == recognizer and recognizer["/classify/MatMul"] == 32 * 128 * TEXT_CLASSES


def test_keeping_a_node_in_high_precision_takes_only_its_quantized_inputs(tmp_path, recognizer):
    quantize.to_int8(recognizer, tmp_path / "r.int8.onnx", calib=recognizer.parent / "calib.npz", max_drop=None)
    plain = onnx.load(str(tmp_path / "r.int8.onnx"))
    kept = quantize.keep_in_high_precision(plain, ["/classify/MatMul", "/features/features.0/Conv"])
    onnx.checker.check_model(kept)
    quantize.check_tensorrt_qdq_rules(kept)
    share = quantize.int8_share(kept, quantize.count_macs(onnx.load(str(recognizer)), (1, *TEXT_SHAPE)))
    assert 90 < share["int8_share"] < 100
    count = sum(node.op_type == "QuantizeLinear" for node in kept.graph.node)
    assert 0 < count < sum(node.op_type == "QuantizeLinear" for node in plain.graph.node)
    outputs = run_onnxruntime(kept, images(TEXT_SHAPE, 2))["char_logits"]
    assert outputs.shape == (2, 32, 37) and np.isfinite(outputs).all()
    with pytest.raises(EdgepipeError, match="no node named /nope"):
        quantize.keep_in_high_precision(plain, ["/nope"])


def test_a_dynamic_hw_recognizer_is_quantized_and_validated_on_the_same_inputs(tmp_path):
    """An .npz's ``inputs`` are preprocessed model inputs to every command: quantize and validate read them alike."""
    from foreign_models import export_text_recognizer

    model = export_text_recognizer(tmp_path / "rec.onnx", dynamic_hw=True)
    np.savez(tmp_path / "lines.npz", inputs=images(TEXT_SHAPE, 64, seed=4))
    np.savez(tmp_path / "val.npz", inputs=images(TEXT_SHAPE, 40, seed=5))
    int8 = tmp_path / "rec.int8.onnx"
    data = ("--calib", tmp_path / "lines.npz", "--data", tmp_path / "val.npz")
    made = run("quantize", model, "--int8", *data, "--max-drop", "none", "-o", int8)  # what is read, not accuracy
    assert made.exit_code == 0, made.output
    for output in ((), ("--json",)):
        checked = run("validate", "--reference", model, int8, "--data", tmp_path / "val.npz", *output)
        assert checked.exit_code == 0, checked.output
    report = json.loads(checked.stdout)
    row = report["rows"][0]
    assert row["status"] == "ok" and row["outputs"]["char_logits"]["argmax_positions"] > 0
    assert report["images"]["kind"] == ".npz" and report["images"]["which"] == "held-out"  # what quantize compared on
    assert report["reference"]["samples"] == 8
