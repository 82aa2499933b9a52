"""edgepipe validate BUNDLE MODEL: a model against a bundle's golden outputs, with no torch and no ONNX Runtime.

The bundle is a real one (``edgepipe package`` of an FP32 classifier, its FP16 and INT8 Q/DQ ONNX);
the models are run for real: on ONNX Runtime, and, where ONNX Runtime cannot be imported (the
packages blocked in a fresh process, as on a light install), on onnx's reference evaluator. Engines
are built for real by TensorRT-RTX on the CPU; running them is under the ``gpu`` marker.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from pipeline import cuda
from tests.conftest import invoke, one_line_error
from tests.deploy_models import classifier, images_npz, qdq_on_input

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ROOT / "tests" / "fixtures" / "blocked"
LIGHT = "torch,onnxruntime,modelopt,sklearn,matplotlib,pycuda"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A bundle of an FP32 classifier, its FP16 and INT8 models (made by edgepipe package), in its folder."""
    from click.testing import CliRunner
    from onnxconverter_common import float16

    folder = tmp_path_factory.mktemp("golden")
    fp32 = classifier(folder)
    onnx.save(
        float16.convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True), str(folder / "model.fp16.onnx")
    )
    qdq_on_input(fp32, folder / "model.int8.onnx")
    models = [fp32, folder / "model.fp16.onnx", folder / "model.int8.onnx"]
    made = invoke(
        CliRunner(), "package", *models, "--target", "jp6", "--data", images_npz(folder), "-o", folder / "bundle"
    )
    assert made.exit_code == 0, made.output
    return folder / "bundle"


def _perturbed(source: Path, path: Path) -> Path:
    model = onnx.load(str(source))
    weight = next(init for init in model.graph.initializer if init.name == "head.weight")
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) + np.float32(0.5), weight.name))
    onnx.save(model, str(path))
    return path


def _light(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``edgepipe ARGS`` in a fresh process where the light install's missing packages cannot be imported."""
    code = (
        "import sys, atexit; from pipeline.cli import main; "
        "atexit.register(lambda: print('imported:', sorted(m for m in ('torch', 'onnxruntime', 'modelopt', 'pycuda') "
        "if m in sys.modules), file=sys.stderr)); main(sys.argv[1:])"
    )
    env = {**os.environ, "PYTHONPATH": f"{BLOCKED}{os.pathsep}{ROOT}", "EDGEPIPE_BLOCKED": LIGHT}
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_every_model_of_the_bundle_passes_its_tolerance(runner, bundle):
    names = ["model.fp32.onnx", "model.fp16.onnx", "model.int8.onnx"]
    result = invoke(runner, "validate", bundle, *[bundle / name for name in names], "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] and report["images"] == 8 and report["target"] == "jp6"
    assert [(row["made_from"], row["precision"], row["known_by"]) for row in report["rows"]] == [
        (name, name.split(".")[1], "sha256") for name in names
    ]
    fp32, fp16, int8 = report["rows"]
    assert fp32["outputs"]["logits"]["max_abs_diff"] <= 1e-5 and fp32["atol"] == 0.005
    assert 0 < fp16["outputs"]["logits"]["max_abs_diff"] <= 0.05 and fp16["runner"].startswith("onnxruntime")
    assert int8["outputs"]["logits"]["elements"] == 8 * 5 and int8["atol"] == 0.3
    human = invoke(runner, "validate", bundle / "golden_outputs.json", bundle / "model.fp16.onnx")
    assert human.exit_code == 0 and "model.fp16.onnx (fp16, made from model.fp16.onnx" in human.output
    assert "passed" in human.output


def test_without_torch_and_onnxruntime_the_onnx_runs_on_the_reference_evaluator(bundle):
    done = _light("validate", ".", "model.fp16.onnx", "model.int8.onnx", "--json", cwd=bundle)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert {row["runner"].split("-1")[0] for row in report["rows"]} == {"onnx-reference"}
    assert all(row["passed"] for row in report["rows"])
    assert "imported: []" in done.stderr
    # the FP16 figures agree with ONNX Runtime's to FP16 rounding
    assert report["rows"][0]["outputs"]["logits"]["max_abs_diff"] <= 1e-3


def test_the_deepstream_golden_outputs_check_the_folded_models(runner, bundle):
    folder = bundle / "deepstream"
    result = invoke(runner, "validate", folder / "golden_outputs.json", folder / "model.fp16.onnx", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows"][0]["made_from"] == "deepstream/model.fp16.onnx"
    # the root's golden outputs (normalized input, logits) were not made for the folded model
    one_line_error(invoke(runner, "validate", bundle, folder / "model.fp16.onnx"), "another model", "sha256")


def test_another_models_outputs_are_refused_in_one_line(runner, bundle, tmp_path):
    other = _perturbed(bundle / "model.fp32.onnx", tmp_path / "model.fp32.onnx")
    line = one_line_error(
        invoke(runner, "validate", bundle, other), "another model", "model.fp32.onnx", "edgepipe package"
    )
    assert "sha256" in line
    done = _light("validate", str(bundle), str(other), cwd=tmp_path)
    assert done.returncode == 1 and "another model" in done.stderr and "Traceback" not in done.stderr


def test_out_of_tolerance_is_a_failed_row_exit_1(runner, bundle, tmp_path):
    copy = shutil.copytree(bundle, tmp_path / "bundle")
    (copy / "tolerances.json").write_text(json.dumps({"fp16": {"atol": 1e-7, "rtol": 1e-7}}))
    result = invoke(runner, "validate", copy, copy / "model.fp16.onnx", "--json")
    assert result.exit_code == 1
    row = json.loads(result.stdout)["rows"][0]
    assert not row["passed"] and row["outputs"]["logits"]["failed_elements"] > 0
    human = invoke(runner, "validate", copy, copy / "model.fp16.onnx")
    assert human.exit_code == 1 and "FAILED (" in human.output


@pytest.mark.parametrize(
    "args, needles",
    [
        (["NOT_A_BUNDLE", "model.fp16.onnx"], ["is not a bundle's golden outputs", "golden_inputs.json"]),
        (["BUNDLE"], ["holds golden outputs", "pass the models after it"]),
        (["BUNDLE", "model.fp16.onnx", "--data", "digits"], ["holds golden outputs", "no --data"]),
        (["BUNDLE", "preprocess.json.onnx"], ["does not exist"]),
    ],
)
def test_bad_input_is_one_line(runner, bundle, tmp_path, args, needles):
    places = {"NOT_A_BUNDLE": str(tmp_path), "BUNDLE": str(bundle)}
    args = [places.get(a, str(bundle / a) if a.endswith(".onnx") else a) for a in args]
    one_line_error(invoke(runner, "validate", *args), *needles)


def _engine(onnx_path: Path, engine: Path) -> Path:
    """A real engine built from ``onnx_path`` (TensorRT-RTX builds on the CPU), with edgepipe's manifest."""
    from pipeline import build
    from pipeline.tensorrt import backend

    if not backend.installed_backends():
        pytest.skip("no TensorRT or TensorRT-RTX installed")
    targets = ["8.9"] if cuda.current_compute_capability() is None else None
    build.build_engine(onnx_path, save_engine=engine, compute_capability=targets, force=True)
    return engine


def test_engines_are_known_by_their_manifest_or_by_build_sh(runner, bundle, tmp_path):
    copy = shutil.copytree(bundle, tmp_path / "bundle")
    other = _engine(_perturbed(copy / "model.fp32.onnx", tmp_path / "other.onnx"), tmp_path / "other.engine")
    one_line_error(invoke(runner, "validate", copy, other), "was built from another model", "sha256")
    stray = tmp_path / "stray.engine"  # no manifest, not an engine build.sh writes
    shutil.copy(other, stray)
    one_line_error(invoke(runner, "validate", copy, stray), "cannot tell which model", "build.sh")
    engine = _engine(copy / "model.fp16.onnx", tmp_path / "model.fp16.engine")
    shutil.copy(engine, copy / "model.fp16.engine")  # as build.sh names it, without a manifest
    for model in (engine, copy / "model.fp16.engine"):
        result = invoke(runner, "validate", copy, model, "--json")
        if cuda.current_compute_capability() is None:  # known, then refused to run without a GPU: one line
            one_line_error(result, "needs an NVIDIA GPU")
        else:
            assert result.exit_code == 0, result.output
            row = json.loads(result.stdout)["rows"][0]
            assert row["made_from"] == "model.fp16.onnx" and row["passed"]


@pytest.mark.gpu
@pytest.mark.skipif(cuda.current_compute_capability() is None, reason="no NVIDIA GPU (the CUDA driver reports none)")
@pytest.mark.skipif(cuda.binding() is None, reason="neither pycuda nor cuda-python is installed")
def test_an_engine_built_from_the_bundle_passes_on_the_gpu(runner, bundle, tmp_path):
    copy = shutil.copytree(bundle, tmp_path / "bundle")
    for name in ("model.fp32", "model.fp16", "model.int8"):
        _engine(copy / f"{name}.onnx", copy / f"{name}.engine")
    result = invoke(
        runner, "validate", copy, *[copy / f"{n}.engine" for n in ("model.fp32", "model.fp16", "model.int8")], "--json"
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert [row["known_by"] for row in rows] == ["manifest"] * 3 and all(row["passed"] for row in rows)
