"""Runners on real models: PyTorch and ONNX Runtime run here; TensorRT engines are real RTX builds
that a CPU-only machine must refuse clearly (no GPU, another TensorRT version) instead of crashing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import compare_logits

from pipeline import cuda
from pipeline.errors import EdgepipeError
from pipeline.images import ModelData, ModelInput
from pipeline.runtime import NoGpuError, Runner, predict
from pipeline.runtime import open_runner as load_runner
from pipeline.runtime.ort import OnnxRuntimeRunner
from pipeline.runtime.pytorch import TorchRunner

NO_GPU = cuda.current_compute_capability() is None


def held_out(config, count=None):
    x, y = ModelData.of(ModelInput.of_config(config)).batches().collect()
    return (x[:count], y[:count]) if count else (x, y)


@pytest.fixture(scope="module")
def reference(trained):
    return TorchRunner.from_checkpoint(trained[0])


def test_torch_and_onnxruntime_agree_on_held_out_split(trained, exported, reference):
    x, y = held_out(trained[1])
    ort = OnnxRuntimeRunner(exported)
    stats = compare_logits(predict(reference, x), predict(ort, x))
    assert reference.name == "pytorch-cpu" and ort.name == "onnxruntime-cpu"
    assert stats["max_abs_diff"] < 1e-4
    assert stats["top1_agreement"] == 100.0


def test_dynamic_batch_runs_any_batch(trained, exported, reference):
    x, _ = held_out(trained[1], 33)
    ort = OnnxRuntimeRunner(exported)
    assert ort.batch_size is None and ort.input_shape == (1, 32, 32)
    for n in (1, 5, 33):
        logits = ort.infer(x[:n])
        assert logits.shape == (n, 10) and logits.dtype == np.float32
        np.testing.assert_allclose(logits, reference.infer(x[:n]), atol=1e-4)


def test_predict_pads_the_last_batch_of_a_fixed_batch_model(trained, reference, tmp_path):
    from pipeline import export

    path = tmp_path / "b4.onnx"
    export.export(trained[0], path, batch=4)
    x, _ = held_out(trained[1], 10)
    ort = OnnxRuntimeRunner(path)
    assert ort.batch_size == 4
    logits = predict(ort, x)
    assert logits.shape == (10, 10)
    np.testing.assert_allclose(logits, reference.infer(x), atol=1e-4)


@pytest.mark.parametrize("make", ["torch", "onnxruntime"])
def test_wrong_dtype_names_expected_and_got(make, exported, reference):
    runner = reference if make == "torch" else OnnxRuntimeRunner(exported)
    with pytest.raises(EdgepipeError, match="takes float32 input; got float64"):
        runner.infer(np.zeros((2, 1, 32, 32), dtype=np.float64))


@pytest.mark.parametrize("make", ["torch", "onnxruntime"])
def test_wrong_shape_names_expected_and_got(make, exported, reference):
    runner = reference if make == "torch" else OnnxRuntimeRunner(exported)
    with pytest.raises(EdgepipeError, match=r"shape \(N, 1, 32, 32\); got \(2, 3, 32, 32\)"):
        runner.infer(np.zeros((2, 3, 32, 32), dtype=np.float32))
    with pytest.raises(EdgepipeError, match=r"got \(1, 32, 32\)"):
        runner.infer(np.zeros((1, 32, 32), dtype=np.float32))


def test_fixed_batch_model_refuses_another_batch(trained, tmp_path):
    from pipeline import export

    path = tmp_path / "b4.onnx"
    export.export(trained[0], path, batch=4)
    with pytest.raises(EdgepipeError, match="fixed batch of 4; got 3.*runtime.predict"):
        OnnxRuntimeRunner(path).infer(np.zeros((3, 1, 32, 32), dtype=np.float32))


def test_batch_larger_than_the_profile_is_a_clear_error():
    # The check every runner (the TensorRT runner with its profile's min and max) applies first.
    batch = np.zeros((64, 1, 32, 32), dtype=np.float32)
    runner = Runner()
    runner.name, runner.input_shape, runner.min_batch, runner.max_batch = "tensorrt-rtx", (1, 32, 32), 1, 32
    with pytest.raises(EdgepipeError, match=r"batch 64 is outside.*takes 1 to 32.*--maxShapes input:64x"):
        runner.check_input(batch)
    assert runner.check_input(batch[:32]) is not None


def test_pytorch_on_cuda_without_a_gpu_is_a_clear_error(trained):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(NoGpuError, match="PyTorch sees no CUDA GPU"):
        TorchRunner.from_checkpoint(trained[0], device="cuda")


# Which CUDA binding runs engines, and the error when neither pycuda nor cuda-python imports: tests/test_cuda_binding.py.


def test_unknown_artifact_type_is_a_clear_error(tmp_path):
    path = tmp_path / "model.txt"
    path.write_text("x")
    with pytest.raises(EdgepipeError, match="cannot tell what"):
        load_runner(path)
    with pytest.raises(EdgepipeError, match="does not exist"):
        load_runner(tmp_path / "missing.onnx")


@pytest.mark.skipif(not NO_GPU, reason="this machine has an NVIDIA GPU (tests/test_gpu.py runs engines)")
def test_engine_on_a_machine_without_gpu_is_refused_clearly(engine):
    with pytest.raises(NoGpuError, match="needs an NVIDIA GPU"):
        load_runner(engine)


def test_engine_built_for_another_tensorrt_version_is_refused_before_the_gpu(engine, tmp_path):
    copy = tmp_path / "other.engine"
    shutil.copy(engine, copy)
    manifest = json.loads((engine.parent / (engine.name + ".manifest.json")).read_text())
    manifest["backend_version"] = "0.9.0"
    (tmp_path / "other.engine.manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        EdgepipeError, match=r"built with .* 0\.9\.0.*engines load only with the version that built them"
    ) as error:
        load_runner(copy)
    assert not isinstance(error.value, NoGpuError)


def test_engine_without_manifest_is_refused(engine, tmp_path):
    copy = tmp_path / "bare.engine"
    shutil.copy(engine, copy)
    with pytest.raises(EdgepipeError, match="no edgepipe engine manifest"):
        load_runner(copy)
