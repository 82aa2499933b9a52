"""edgepipe package: a bundle whose golden outputs Polygraphy checks with no edgepipe, and its build flags."""

from __future__ import annotations

import json
import subprocess
import sys
from itertools import product
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from onnx import numpy_helper

from pipeline.deploy import deepstream, golden, targets
from pipeline.precision import Precision
from tests.conftest import invoke, one_line_error
from tests.deploy_models import CLASSES, classifier, images_npz, qdq_on_input

POLYGRAPHY = str(Path(sys.executable).with_name("polygraphy"))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(fp32, fp16, int8 Q/DQ) ONNX of one classifier, and an .npz of images."""
    from onnxconverter_common import float16

    folder = tmp_path_factory.mktemp("package")
    fp32 = classifier(folder)
    fp16 = folder / "model.fp16.onnx"
    onnx.save(float16.convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True), str(fp16))
    return fp32, fp16, qdq_on_input(fp32, folder / "model.int8.onnx"), images_npz(folder)


def _package(runner, bundle, *paths, target="jp6", extra=()):
    """``edgepipe package`` of ``paths`` (the models, then the data) into ``bundle``."""
    *onnx_files, data = paths
    return invoke(runner, "package", *onnx_files, "--target", target, "--data", data, "-o", bundle, "--json", *extra)


def _polygraphy(bundle: Path, artifact: str, precision: Precision):
    command = golden.check_command(artifact, "--onnxrt", precision).split()
    return subprocess.run([POLYGRAPHY, *command[1:]], cwd=bundle, capture_output=True, text=True, timeout=300)


def test_golden_check_passes_with_polygraphy_and_fails_after_one_weight_is_perturbed(runner, models, tmp_path):
    fp32, fp16, _, data = models
    bundle = tmp_path / "bundle"
    result = _package(runner, bundle, fp32, fp16, data)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["precisions"] == ["fp32", "fp16"] and record["golden"]["images"] == 8
    cost = record["deepstream_unfolded_cost"]  # one scale for ImageNet's std: up to 1.33% off on a channel
    assert cost["max_scale_error"] == pytest.approx(0.229 / 0.226 - 1) and 0 < cost["max_abs_diff"] < 0.1
    assert 0 <= cost["top1_agreement"] <= 1
    for folder, precision in product((bundle, bundle / "deepstream"), (Precision.FP32, Precision.FP16)):
        check = _polygraphy(folder, f"model.{precision.value}.onnx", precision)
        assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]
    perturbed = onnx.load(str(bundle / "model.fp32.onnx"))
    weight = next(init for init in perturbed.graph.initializer if init.name == "head.weight")
    values = numpy_helper.to_array(weight).copy()
    values[0, 0] += 1.0
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    onnx.save(perturbed, str(bundle / "perturbed.onnx"))
    check = _polygraphy(bundle, "perturbed.onnx", Precision.FP32)
    assert check.returncode != 0 and "FAILED" in check.stdout + check.stderr


def test_bundle_files_deepstream_and_triton(runner, models, tmp_path):
    from polygraphy.comparator import RunResults
    from polygraphy.json import load_json
    from tritonclient.grpc import model_config_pb2

    from pipeline.onnxinfo import run_onnxruntime

    fp32, fp16, _, data = models
    bundle = tmp_path / "bundle"
    assert _package(runner, bundle, fp32, fp16, data).exit_code == 0
    assert (bundle / "labels.txt").read_text().split() == list(CLASSES)
    assert json.loads((bundle / "preprocess.json").read_text())["crop"] == [32, 32]
    readme = (bundle / "README.txt").read_text()
    assert "sh build.sh" in readme and "sha256sum -c SHA256SUMS" in readme and "no centre crop" in readme
    assert "--trt --load-inputs golden_inputs.json" in readme and "(cd deepstream && polygraphy run" in readme
    # DeepStream: folded + softmax ONNX on nvinfer's x/255 equals the softmax of the golden FP32 logits
    feeds, outputs = load_json(str(bundle / "golden_inputs.json")), RunResults.load(str(bundle / "golden_outputs.json"))
    pre = json.loads((bundle / "preprocess.json").read_text())
    mean, std = (np.asarray(pre[k], np.float32).reshape(1, 3, 1, 1) for k in ("mean", "std"))
    for feed, result in zip(feeds, outputs[0][1]):
        probabilities = run_onnxruntime(bundle / "deepstream/model.fp32.onnx", feed["input"] * std + mean)
        logits = result["logits"].astype(np.float64)
        expected = np.exp(logits - logits.max(1, keepdims=True))
        assert np.max(np.abs(probabilities["probabilities"] - expected / expected.sum(1, keepdims=True))) <= 1e-5
    config = deepstream.parse_config((bundle / "deepstream/nvinfer_fp16.txt").read_text())
    assert set(config) <= deepstream.NVINFER_KEYS and config["network-mode"] == "2"
    assert (bundle / "deepstream" / config["model-engine-file"]).with_suffix(".onnx").is_file()
    assert (bundle / "deepstream/labels.txt").read_text() == ";".join(CLASSES) + "\n"
    assert "deepstream/model.fp16.engine" in (bundle / "build.sh").read_text()
    triton = text_format.Parse((bundle / "triton/model_fp16/config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert triton.name == "model_fp16" and triton.max_batch_size == 32 and list(triton.input[0].dims) == [3, 32, 32]
    assert "triton/model_fp16/1/model.plan" in (bundle / "build.sh").read_text()
    sums = (bundle / "SHA256SUMS").read_text()
    assert "model.fp16.onnx" in sums and subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=bundle).returncode == 0


@pytest.mark.parametrize(
    "target, precisions", [("jp5", 2), ("jp6", 3), ("jp7", 3), ("trt10", 3), ("trt11", 3), ("rtx", 3)]
)
def test_every_build_flag_is_in_the_targets_table(runner, models, tmp_path, target, precisions):
    bundle = tmp_path / target
    result = _package(runner, bundle, *models[: precisions if precisions == 3 else 2], models[3], target=target)
    assert result.exit_code == 0, result.output
    commands = [
        line.split() for line in (bundle / "build.sh").read_text().splitlines() if line.startswith('"$TRTEXEC"')
    ]
    assert len(commands) == 2 * precisions  # the plain engine and the DeepStream one, per precision
    table = targets.TARGETS[target].flags
    for words in commands:
        assert set(targets.flag_names(words)) <= table, set(targets.flag_names(words)) - table
        assert "--maxShapes=input:32x3x32x32" in words
    used = {flag for words in commands for flag in targets.flag_names(words)}
    assert ("--stronglyTyped" in used) == (target in ("jp6", "jp7", "trt10"))
    assert not used & {"--fp16", "--int8"} or target == "jp5"


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--target", "jp9"], ["unknown target 'jp9'", "jp5"]),
        (["--target", "jp5", "INT8"], ["cannot build int8", "TensorRT 8.5"]),
        (["--target", "jp7", "--dla"], ["has no DLA", "Thor"]),
        (["--target", "jp6", "--triton-max-batch", "64"], ["above the engine's profile", "--triton-max-batch 32"]),
        (["--target", "jp6", "--labels", "MISSING"], ["does not exist"]),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(runner, models, tmp_path, args, needles):
    fp32, fp16, int8, data = models
    paths = [fp32, fp16] + ([int8] if "INT8" in args else [])
    args = [a for a in args if a != "INT8"]
    args = [str(tmp_path / "none.txt") if a == "MISSING" else a for a in args]
    result = invoke(runner, "package", *paths, "--data", data, "-o", tmp_path / "bundle", *args)
    one_line_error(result, *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_an_existing_bundle_is_kept_unless_force(runner, models, tmp_path):
    fp32, _, _, data = models
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "keep.txt").write_text("mine")
    one_line_error(_package(runner, bundle, fp32, data), "already exists", "--force")
    assert (bundle / "keep.txt").read_text() == "mine"
    assert _package(runner, bundle, fp32, data, extra=["--force"]).exit_code == 0
    assert not (bundle / "keep.txt").exists() and (bundle / "build.sh").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_docs_device_md_checks_run(runner, models, tmp_path):
    """docs/device.md's bash and python blocks, less their ``edgepipe`` lines (tests/test_examples.py runs those).

    What remains runs as written on a bundle of the first example's models: the Polygraphy check before
    the bundle travels, and the telemetry snippet (text blocks are for the device).
    """
    import os
    import re

    fp32, fp16, _, data = models
    assert _package(runner, tmp_path / "bundle", fp32, fp16, data).exit_code == 0
    text = (Path(__file__).parent.parent / "docs" / "device.md").read_text()
    blocks = [
        (kind, "\n".join(line for line in body.splitlines() if not line.startswith("edgepipe ")))
        for kind, body in re.findall(r"```(bash|python)\n(.*?)```", text, re.S)
    ]
    assert sum("polygraphy run" in body for _, body in blocks) == 1
    root = str(Path(__file__).parent.parent)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": root}
    for kind, body in blocks:
        command = ["bash", "-euc", body] if kind == "bash" else [sys.executable, "-c", body]
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{body}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
