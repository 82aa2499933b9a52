"""TensorRT engines on a real GPU: outputs against PyTorch, dynamic batch, timing, CUDA graphs.

Run with ``pytest -m gpu``; every test skips with its reason where there is no NVIDIA GPU, no
TensorRT (or TensorRT-RTX) or no pycuda.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from pipeline import cuda
from pipeline.errors import EdgepipeError
from pipeline.images import ModelData, ModelInput
from pipeline.metrics import compare_logits
from pipeline.runtime import open_runner as load_runner
from pipeline.runtime import predict
from pipeline.runtime.pytorch import TorchRunner
from pipeline.tensorrt import backend as backendmod

pytestmark = pytest.mark.gpu
SHAPES = {"min": "input:1x1x32x32", "opt": "input:8x1x32x32", "max": "input:32x1x32x32"}


def _missing() -> str | None:
    if cuda.current_compute_capability() is None:
        return "no NVIDIA GPU (the CUDA driver reports none)"
    if not backendmod.installed_backends():
        return "neither TensorRT nor TensorRT-RTX is installed"
    if importlib.util.find_spec("pycuda") is None:
        return "pycuda is not installed (pip install 'edgepipe[gpu]')"
    return None


@pytest.fixture(scope="module", autouse=True)
def gpu_host():
    reason = _missing()
    if reason:
        pytest.skip(reason)


def _build(onnx_path, folder, precision="fp32"):
    from pipeline import build

    be = backendmod.get_backend()
    targets = ["current"] if be.name == backendmod.TENSORRT_RTX else None
    path = folder / f"model_{precision}.engine"
    build.build_engine(
        onnx_path, precision=precision, save_engine=path, shapes=SHAPES, compute_capability=targets, force=True
    )
    return path


@pytest.fixture(scope="module")
def engine_fp32(exported, tmp_path_factory):
    return _build(exported, tmp_path_factory.mktemp("gpu"))


@pytest.fixture(scope="module")
def held_out(trained):
    config = trained[1]
    return ModelData.of(ModelInput.of_config(config)).batches().collect()


def test_fp32_engine_matches_pytorch(trained, engine_fp32, held_out):
    x, y = held_out
    runner = load_runner(engine_fp32)
    try:
        stats = compare_logits(predict(TorchRunner.from_checkpoint(trained[0]), x), predict(runner, x))
    finally:
        runner.close()
    # TensorRT may use TF32 for FP32 layers on Ampere and newer, hence not 1e-5.
    assert stats["max_abs_diff"] < 5e-2
    assert stats["top1_agreement"] >= 99.5


def test_fp16_engine_agrees_on_top1(trained, exported, held_out, tmp_path):
    x, _ = held_out
    try:
        path = _build(exported, tmp_path, precision="fp16")
    except EdgepipeError as exc:
        pytest.skip(f"FP16 engine not buildable here: {exc}")
    runner = load_runner(path)
    try:
        stats = compare_logits(predict(TorchRunner.from_checkpoint(trained[0]), x), predict(runner, x))
    finally:
        runner.close()
    assert stats["top1_agreement"] >= 98.0


def test_dynamic_batch_within_the_profile_and_a_clear_error_beyond(engine_fp32, held_out):
    x, _ = held_out
    runner = load_runner(engine_fp32)
    try:
        assert (runner.min_batch, runner.max_batch) == (1, 32)
        for n in (1, 7, 32):
            assert runner.infer(np.ascontiguousarray(x[:n])).shape == (n, 10)
        timing = runner.last_timing()
        assert timing["compute_ms"] > 0 and timing["h2d_ms"] >= 0 and timing["d2h_ms"] >= 0
        assert runner.device_memory_bytes() >= 0
        with pytest.raises(EdgepipeError, match="batch 33 is outside"):
            runner.infer(np.ascontiguousarray(x[:33]))
    finally:
        runner.close()


def test_cuda_graph_replay_gives_the_same_logits(engine_fp32, held_out):
    x, _ = held_out
    batch = np.ascontiguousarray(x[:8])
    plain = load_runner(engine_fp32)
    try:
        expected = plain.infer(batch)
    finally:
        plain.close()
    graphed = load_runner(engine_fp32, cuda_graph=True)
    try:
        for _ in range(3):  # capture on the first call, replay after
            np.testing.assert_allclose(graphed.infer(batch), expected, rtol=1e-5, atol=1e-5)
        assert 8 in graphed._graphs
    finally:
        graphed.close()


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_bench_times_the_engine_with_the_trtexec_split(trained, engine_fp32, cuda_graph):
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = bench_engine(trained, engine_fp32, device, cuda_graph)
    rows = [r for r in result["rows"] if r["format"] == "engine"]
    assert [r["status"] for r in rows] == ["ok", "ok"], rows
    for r in rows:
        assert r["compute_ms"] > 0 and r["h2d_ms"] > 0 and r["d2h_ms"] > 0 and r["device_memory_mb"] >= 0
        assert r["min_ms"] <= r["median_ms"] <= r["p99_ms"]
    assert result["failed"] == 0


def bench_engine(trained, engine, device, cuda_graph):
    from pipeline import bench

    return bench.bench(
        [str(engine)],
        checkpoint=trained[0],
        batches=(1, 8),
        warmup_ms=100,
        iterations=50,
        cuda_graph=cuda_graph,
        device=device,
        progress=False,
    )


def test_engine_is_faster_than_pytorch_eager_on_the_same_gpu(trained, engine_fp32):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("PyTorch here has no CUDA; the speed comparison needs PyTorch on the same GPU")
    result = bench_engine(trained, engine_fp32, "cuda", cuda_graph=False)
    by = {(r["format"], r["batch"]): r for r in result["rows"]}
    # Not the 3x target (that is for FP16 on a real model); only that the engine is not slower.
    assert by[("engine", 1)]["median_ms"] <= by[("pytorch", 1)]["median_ms"]
