"""INT8 by quantization-aware training (--int8 --qat): ModelOpt's PyTorch quantization, fine-tuned and exported with Q/DQ.

Real parts throughout: the zoo model trained on the digits (conftest), ModelOpt's PyTorch INT8
config, the TorchScript ONNX exporter, the TensorRT Q/DQ rule checks and ONNX Runtime.
"""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import invoke, one_line_error

import calibration
from pipeline import quantize
from pipeline.artifacts import read_manifest
from pipeline.images import SPLIT_SEED, ModelData, ModelInput
from pipeline.precision import of_onnx
from pipeline.quantize.compare import CHECK_LIMIT

EPOCHS = 2


@pytest.fixture(scope="module")
def calib_set(trained, tmp_path_factory):
    """128 calibration images of the digits pool: QAT calibrates and fine-tunes on them."""
    return calibration.save(
        tmp_path_factory.mktemp("qat-calib") / "calib.npz", calibration.draw_for(trained[0], num=128, seed=0)
    )


@pytest.fixture(scope="module")
def qat(exported, trained, calib_set, tmp_path_factory):
    output = tmp_path_factory.mktemp("qat") / "model.qat.onnx"
    return quantize.to_int8_qat(exported, output, EPOCHS, checkpoint=trained[0], calib=calib_set)


def _held_out(exported):
    """The held-out images the stage compares on, read here the way the model records them."""
    data = ModelData.of(ModelInput.of_onnx(exported), None)
    picked = data.draw(CHECK_LIMIT, seed=SPLIT_SEED, held_out=True)
    return data.batches(picked).collect()


def _argmax(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + 64]})[0].argmax(-1) for i in range(0, len(x), 64)])


def test_qat_writes_a_qdq_model_that_passes_the_tensorrt_rules_and_agrees_with_fp32(qat, exported):
    model = onnx.load(qat["onnx"])
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("QuantizeLinear") >= 10 and ops.count("DequantizeLinear") >= 10
    assert of_onnx(model) == "int8"
    quantize.check_tensorrt_qdq_rules(model)  # raises naming the node otherwise
    # ONNX Runtime runs it; its agreement with FP32 on the held-out digits, measured here, is what the stage reports
    x, y = _held_out(exported)
    fp32, int8 = _argmax(exported, x), _argmax(qat["onnx"], x)
    agreement = 100.0 * float(np.mean(fp32 == int8))
    assert agreement == pytest.approx(qat["agreement"], abs=1e-6)
    assert agreement >= 97.0 and qat["top1"] == pytest.approx(100.0 * float(np.mean(int8 == y)), abs=1e-6)
    assert qat["check"]["on"] == "data" and qat["samples"] == len(x)


def test_qat_reports_before_and_after_and_what_runs_in_int8(qat):
    record = qat["qat"]
    assert record["epochs"] == EPOCHS and len(record["losses"]) == EPOCHS and record["images"] == 128
    assert record["before"]["agreement"] > 50.0 and record["after"]["agreement"] == qat["agreement"]
    assert qat["macs"]["int8_share"] >= 90.0 and record["after"]["int8_share"] == qat["macs"]["int8_share"]
    assert [row["how"].split()[0] for row in qat["attempts"]] == ["ptq", "qat"]
    assert all(row["seconds"] >= 0 and "int8_share" in row for row in qat["attempts"])
    # attention gates (Sigmoid) stay in float: nothing quantizes their input
    model = onnx.load(qat["onnx"])
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    assert all(producers.get(n.input[0]) != "DequantizeLinear" for n in model.graph.node if n.op_type == "Sigmoid")
    manifest = read_manifest(qat["onnx"])
    assert manifest["precision"] == "int8" and manifest["params"]["method"] == "qat"
    assert manifest["qat"]["after"] == record["after"] and manifest["inputs"]["pytorch"] == qat["pytorch"]["sha256"]
    assert json.loads(dict((p.key, p.value) for p in model.metadata_props)["edgepipe.int8"])["epochs"] == EPOCHS


def test_qat_cli_json(runner, exported, trained, calib_set, tmp_path):
    out = tmp_path / "m.qat.onnx"
    args = ("--int8", "--qat", 1, "--checkpoint", trained[0], "--calib", calib_set, "--min-agreement", 95)
    result = invoke(runner, "quantize", exported, *args, "--json", "-o", out)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["method"] == "qat" and report["qat"]["epochs"] == 1 and report["agreement"] >= 95 and out.is_file()


def test_qat_on_an_onnx_with_no_pytorch_model_is_one_line(runner, exported, trained, tmp_path):
    bare = onnx.load(exported)
    del bare.metadata_props[:]
    onnx.save(bare, tmp_path / "bare.onnx")
    out = tmp_path / "x.onnx"
    args = ("--int8", "--qat", 1, "--checkpoint", trained[0], "--data", "digits", "-o", out)
    one_line_error(invoke(runner, "quantize", tmp_path / "bare.onnx", *args), "records none", "Fix: export")
    assert not out.exists()


def test_qat_needs_the_checkpoint_the_onnx_came_from(runner, exported, tmp_path):
    import torch

    out = tmp_path / "x.onnx"
    one_line_error(
        invoke(runner, "quantize", exported, "--int8", "--qat", 1, "-o", out), "none is given", "--checkpoint"
    )
    torch.save({"w": torch.zeros(1)}, tmp_path / "other.pt")
    result = invoke(
        runner, "quantize", exported, "--int8", "--qat", 1, "--checkpoint", tmp_path / "other.pt", "-o", out
    )
    one_line_error(result, "other.pt is not the model", "sha256")
    assert not out.exists()


@pytest.mark.parametrize(
    "flags, needle",
    [
        (("--fp16", "--qat", 1), "--qat makes an INT8 model"),
        (("--int8", "--checkpoint", "x.pt"), "--checkpoint only apply to --qat"),
        (("--int8", "--qat", 1, "--exclude-op", "Conv"), "--exclude-op name ONNX nodes and ops"),
        (("--int8", "--qat", 0), "--qat"),
    ],
)
def test_qat_flag_mistakes_are_one_line(runner, exported, tmp_path, flags, needle):
    result = invoke(runner, "quantize", exported, *flags, "-o", tmp_path / "x.onnx")
    assert result.exit_code != 0 and needle in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x.onnx").exists()


def test_qat_model_builds_an_int8_engine(qat, tmp_path):
    """The TensorRT(-RTX) ONNX parser and builder take the QAT graph (TensorRT-RTX builds on the CPU)."""
    from pipeline import build, cuda
    from pipeline.tensorrt import backend

    if not backend.installed_backends():
        pytest.skip("no TensorRT or TensorRT-RTX installed")
    no_gpu = cuda.current_compute_capability() is None
    targets = ["8.9"] if backend.get_backend().name == backend.TENSORRT_RTX and no_gpu else None
    shapes = {"min": "input:1x1x32x32", "opt": "input:8x1x32x32", "max": "input:8x1x32x32"}
    made = build.build_engine(
        qat["onnx"], save_engine=tmp_path / "qat.engine", shapes=shapes, compute_capability=targets
    )
    assert made["precision"] == "int8" and (tmp_path / "qat.engine").stat().st_size > 0


USER_NET = """
import torch.nn as nn


def make_net(num_classes=10, in_chans=1):
    return nn.Sequential(
        nn.Conv2d(in_chans, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
    )
"""


def test_qat_of_a_users_module_from_its_weights_file(runner, tmp_path, monkeypatch):
    """Your own module and its weights, exported as 'edgepipe export --weights --model' takes them, then QAT on your images."""
    import torch
    from safetensors.torch import save_file

    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.py").write_text(USER_NET)
    namespace: dict = {}
    exec(USER_NET, namespace)
    torch.manual_seed(0)
    save_file(namespace["make_net"]().state_dict(), "w.safetensors")
    made = invoke(
        runner,
        "export",
        "--weights",
        "w.safetensors",
        "--model",
        "net.py:make_net",
        "--input-size",
        "1x32x32",
        "-o",
        "net.onnx",
    )
    assert made.exit_code == 0, made.output
    args = ("--int8", "--qat", 1, "--checkpoint", "w.safetensors", "--model", "net.py:make_net", "--data", "digits")
    result = invoke(runner, "quantize", "net.onnx", *args, "--json", "-o", "net.qat.onnx")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["pytorch"]["model"].startswith("net.py:make_net") and report["qat"]["images"] >= 64
    model = onnx.load("net.qat.onnx")
    quantize.check_tensorrt_qdq_rules(model)
    assert (
        sum(node.op_type == "QuantizeLinear" for node in model.graph.node) >= 6
        and report["macs"]["int8_share"] == 100.0
    )
