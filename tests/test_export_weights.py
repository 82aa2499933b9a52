"""`edgepipe export WEIGHTS --model SPEC` with no --data: the model built from its spec alone, exported
at its own size (or --input-size), proven on seeded synthetic inputs and said so, and usable by the
later stages as any ONNX. The user's module is written by the test (tests/test_modelspec.py): an
RGB attention CNN that declares img_size 96."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import invoke, one_line_error
from test_modelspec import write_model

from pipeline.commands.build import build_engine_main
from pipeline.images import Record
from pipeline.modelspec import ModelSpec, build
from pipeline.onnxfile import read_metadata
from pipeline.onnxinfo import describe
from pipeline.tensorrt import backend

SYNTHETIC = "32 synthetic inputs (seeded); pass --data for your images"
NO_SIZE_PY = """
from torch import nn


def make_plain(num_classes=4):
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
"""


@pytest.fixture()
def net(tmp_path):
    """The user's model file and its spec text, with a narrow width so the test runs fast."""
    path = write_model(tmp_path / "usermodel")
    return path, f"{path}:make_net"


def weights_of(spec: str, path, *args: str) -> torch.nn.Module:
    """A model built the way a user would, its state dict saved to ``path`` (.pt or .safetensors)."""
    torch.manual_seed(0)
    model = build(ModelSpec.parse(spec, list(args))).eval()
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(model.state_dict(), str(path))
    else:
        torch.save(model.state_dict(), path)
    return model


def test_pt_weights_export_at_the_given_size_proven_on_synthetic_inputs_and_build_fp16(net, tmp_path, runner):
    _, spec = net
    weights = tmp_path / "w.pt"
    weights_of(spec, weights, "width=8")
    onnx_path = tmp_path / "model.onnx"
    result = invoke(
        runner,
        "export",
        weights,
        "--model",
        spec,
        "--model-arg",
        "width=8",
        "--input-size",
        "3x96x96",
        "-o",
        onnx_path,
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert f"checked against PyTorch on {SYNTHETIC}" in result.stderr
    figures = json.loads(result.stdout)
    assert figures["input_shape"] == [3, 96, 96] and figures["num_classes"] == 10 and figures["samples"] == 32
    assert figures["max_abs_diff"] <= 1e-4 and figures["top1_agreement"] == 100.0
    assert (
        figures["checked_on"] == "32 synthetic inputs (seeded)" and "top1_onnx" not in figures
    )  # no labels: no accuracy claimed
    sha256 = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert figures["weights_sha256"] == sha256

    proto = onnx.load(str(onnx_path))
    metadata = read_metadata(proto)
    assert Record.of_onnx(proto).data is None  # no data recorded: later stages take the user's images
    assert (
        json.loads(metadata["edgepipe.model_spec"])["args"] == {"width": 8}
        and metadata["edgepipe.weights_sha256"] == sha256
    )
    assert json.loads(metadata["edgepipe.input_shape"]) == [3, 96, 96] and metadata["edgepipe.num_classes"] == "10"
    assert list(describe(proto).input.shape) == [1, 3, 96, 96]
    manifest = json.loads((tmp_path / "model.onnx.manifest.json").read_text())
    assert (
        manifest["inputs"] == {"weights": sha256} and manifest["parity"]["checked_on"] == "32 synthetic inputs (seeded)"
    )
    assert manifest["model"]["spec"] == spec and manifest["model"]["num_classes"] == 10

    plain = invoke(
        runner,
        "export",
        weights,
        "--model",
        spec,
        "--model-arg",
        "width=8",
        "--input-size",
        "3x96x96",
        "-o",
        tmp_path / "again.onnx",
    )
    assert (
        plain.exit_code == 0
        and "on 32 synthetic inputs (seeded) vs PyTorch" in plain.stdout
        and "pass --data" in plain.stdout
    )

    if "tensorrt-rtx" not in backend.installed_backends():
        pytest.skip("TensorRT-RTX is not installed: the engine build is not checked")
    # build-engine is its own console script; TensorRT-RTX builds for compute capability 8.9 without a GPU
    engine = runner.invoke(
        build_engine_main, [str(onnx_path), "--fp16", "--computeCapability", "8.9"], catch_exceptions=False
    )
    assert engine.exit_code == 0, engine.output
    assert (tmp_path / "model.fp16.engine").is_file()
    assert "FP16 checked against FP32 on 32 synthetic inputs" in engine.stdout and "agreement 100.00%" in engine.stdout


def test_safetensors_export_at_the_models_own_size_with_dynamic_size(net, tmp_path, runner):
    _, spec = net
    weights = tmp_path / "w.safetensors"
    source = weights_of(spec, weights, "width=8", "num_classes=5")
    onnx_path = tmp_path / "model.onnx"
    result = invoke(
        runner,
        "export",
        weights,
        "--model",
        spec,
        "--model-arg",
        "width=8",
        "--model-arg",
        "num_classes=5",
        "--dynamic-batch",
        "--dynamic-size",
        "-o",
        onnx_path,
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert SYNTHETIC in result.stderr
    figures = json.loads(result.stdout)
    assert (
        figures["input_shape"] == [3, 96, 96] and figures["num_classes"] == 5 and figures["dynamic_size"] is True
    )  # img_size 96, RGB
    assert list(describe(onnx.load(str(onnx_path))).input.shape) == ["batch", 3, "height", "width"]

    # the open height and width really are open: another size and batch match PyTorch too
    x = np.random.default_rng(1).standard_normal((3, 3, 64, 80)).astype(np.float32)
    logits = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with torch.no_grad():
        reference = source(torch.from_numpy(x)).numpy()
    assert logits.shape == (3, 5) and np.abs(logits - reference).max() <= 1e-4


def test_weights_export_errors_are_one_line_and_write_nothing(net, tmp_path, runner):
    _, spec = net
    weights = tmp_path / "w.pt"
    weights_of(spec, weights, "width=8")
    out = tmp_path / "m.onnx"

    one_line_error(
        invoke(
            runner, "export", weights, "--model", spec, "--model-arg", "width=8", "--input-size", "1x96x96", "-o", out
        ),
        "the model cannot take input 1x96x96: its forward pass raised RuntimeError",
        "--input-size",
    )
    one_line_error(
        invoke(
            runner, "export", weights, "--model", spec, "-o", out
        ),  # built at width 16: the first key that differs is named
        "w.pt holds weights for another architecture: features.0.weight is [8, 3, 3, 3] in the file but [16, 3, 3, 3]",
        "--model-arg",
    )

    plain = tmp_path / "plain.py"
    plain.write_text(NO_SIZE_PY)
    plain_weights = tmp_path / "plain.safetensors"
    weights_of(f"{plain}:make_plain", plain_weights)
    one_line_error(
        invoke(runner, "export", plain_weights, "--model", f"{plain}:make_plain", "-o", out),
        "declares no input size",
        "pass --input-size, e.g. --input-size 3x224x224",
    )
    assert not out.exists() and not out.with_name("m.onnx.manifest.json").exists()

    sized = invoke(
        runner,
        "export",
        plain_weights,
        "--model",
        f"{plain}:make_plain",
        "--input-size",
        "3x40x40",
        "--batch",
        "4",
        "-o",
        out,
        "--json",
    )
    assert sized.exit_code == 0, sized.output
    assert json.loads(sized.stdout)["num_classes"] == 4 and list(describe(onnx.load(str(out))).input.shape) == [
        4,
        3,
        40,
        40,
    ]


def test_a_zoo_models_plain_state_dict_still_means_the_bundled_digits(tmp_path, runner):
    model = build(ModelSpec.parse("se_resnet"), {"num_classes": 10, "in_chans": 1})
    torch.save(model.state_dict(), tmp_path / "se.pt")
    result = invoke(runner, "export", tmp_path / "se.pt", "--model", "se_resnet", "-o", tmp_path / "se.onnx", "--json")
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert (
        figures["samples"] == 359 and figures["top1_agreement"] == 100.0
    )  # the digits' held-out split, not synthetic inputs
    assert Record.of_onnx(onnx.load(str(tmp_path / "se.onnx"))).source == "digits"


def test_validate_against_the_users_pytorch_model_from_its_weights(net, tmp_path, runner):
    from PIL import Image

    _, spec = net
    weights = tmp_path / "w.safetensors"
    weights_of(spec, weights, "width=8")
    onnx_path, fp16 = tmp_path / "model.onnx", tmp_path / "model.fp16.onnx"
    exported = invoke(
        runner,
        "export",
        weights,
        "--model",
        spec,
        "--model-arg",
        "width=8",
        "--input-size",
        "3x64x64",
        "--dynamic-batch",
        "-o",
        onnx_path,
    )
    assert exported.exit_code == 0, exported.output
    assert invoke(runner, "quantize", onnx_path, "--fp16", "-o", fp16).exit_code == 0
    photos = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for c in range(10):
        (photos / f"c{c}").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (72, 80, 3), dtype=np.uint8)).save(photos / f"c{c}" / f"{i}.png")
    args = ["validate", "--reference", weights, "--model", spec, "--model-arg", "width=8"]
    result = invoke(runner, *args, onnx_path, fp16, "--data", photos, "--resize", "64x64", "--workers", 0, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["reference"]["runner"] == "pytorch-cpu" and report["reference"]["samples"] == 30
    fp32_row, fp16_row = report["rows"]
    assert fp32_row["max_abs_diff"] <= 1e-4 and fp32_row["agreement"] == 100.0 and fp16_row["status"] == "ok"
    one_line_error(
        invoke(runner, *args, tmp_path / "missing.engine", "--data", photos), "is a weights file", "among the artifacts"
    )
