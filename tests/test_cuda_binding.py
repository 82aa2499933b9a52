"""The one door to the GPU (pipeline.cuda): pycuda when it is installed, else cuda-python, else one clear error.

Which binding is chosen, and the error when neither imports, are tested here without a GPU (the
packages blocked in a fresh process, as on an install without them). Engines running through
cuda-python for real are under the ``gpu`` marker.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline import cuda
from pipeline.errors import EdgepipeError

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ROOT / "tests" / "fixtures" / "blocked"
HAS_CUDA_PYTHON = importlib.util.find_spec("cuda") is not None and cuda._cuda_python_runtime() is not None
NO_GPU = cuda.current_compute_capability() is None


def _python(code: str, blocked: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{BLOCKED}{os.pathsep}{ROOT}", "EDGEPIPE_BLOCKED": blocked}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not HAS_CUDA_PYTHON, reason="cuda-python is not installed (pip install 'edgepipe[cuda12]')")
def test_without_pycuda_engines_go_through_cuda_python():
    done = _python(
        "from pipeline import cuda; api = cuda.import_cuda(); print(cuda.binding(), type(api).__name__)", "pycuda"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["cuda-python", "CudaPython"]


def test_with_neither_binding_one_error_names_both_and_the_extras():
    code = (
        "from pipeline import cuda\nfrom pipeline.errors import EdgepipeError\nprint(cuda.binding())\n"
        "try:\n    cuda.import_cuda()\nexcept EdgepipeError as exc:\n    print(exc)"
    )
    done = _python(code, "pycuda,cuda")
    assert done.returncode == 0, done.stderr
    binding, message = done.stdout.strip().splitlines()
    assert binding == "None"
    assert "needs pycuda or cuda-python, and neither can be imported" in message
    assert "edgepipe[cuda12]" in message and "edgepipe[cuda13]" in message and "edgepipe[gpu]" in message


@pytest.mark.skipif(not HAS_CUDA_PYTHON, reason="cuda-python is not installed (pip install 'edgepipe[cuda12]')")
@pytest.mark.skipif(not NO_GPU, reason="a GPU is here: the CUDA runtime starts")
def test_cuda_python_without_a_gpu_is_one_clear_error():
    api = cuda.CudaPython(cuda._cuda_python_runtime())
    with pytest.raises(EdgepipeError, match=r"CUDA cudaFree failed \(.+\)\. Fix: check the GPU"):
        api.init()


@pytest.mark.gpu
@pytest.mark.skipif(NO_GPU, reason="no NVIDIA GPU (the CUDA driver reports none)")
@pytest.mark.skipif(not HAS_CUDA_PYTHON, reason="cuda-python is not installed (pip install 'edgepipe[cuda12]')")
def test_cuda_python_buffers_streams_and_events_round_trip():
    api = cuda.CudaPython(cuda._cuda_python_runtime())
    api.init()
    api.Device(0).retain_primary_context().push()
    stream, start, end = api.Stream(), api.Event(), api.Event()
    host = api.pagelocked_empty((4, 256), np.float32)
    back = api.pagelocked_empty((4, 256), np.float32)
    device = api.mem_alloc(host.nbytes)
    host[:] = np.arange(host.size, dtype=np.float32).reshape(host.shape)
    start.record(stream)
    api.memcpy_htod_async(device, host[:2], stream)  # a view: the first two rows
    api.memcpy_dtoh_async(back[:2], device, stream)
    end.record(stream)
    end.synchronize()
    stream.synchronize()
    assert np.array_equal(back[:2], host[:2]) and start.time_till(end) >= 0
    device.free()
    for array in (host, back):
        array.base.free()
    api.Context.pop()


@pytest.mark.gpu
@pytest.mark.skipif(NO_GPU, reason="no NVIDIA GPU (the CUDA driver reports none)")
@pytest.mark.skipif(not HAS_CUDA_PYTHON, reason="cuda-python is not installed (pip install 'edgepipe[cuda12]')")
def test_an_engine_runs_through_cuda_python_as_through_pycuda(engine, exported):
    """The engine's outputs through cuda-python (pycuda blocked) equal ONNX Runtime's on the same images."""
    code = (
        "import sys, json, numpy as np\nfrom pipeline import cuda\nfrom pipeline.runtime import open_runner, predict\n"
        "from pipeline.onnxinfo import run_onnxruntime\n"
        "x = np.random.default_rng(0).random((8, 1, 32, 32), dtype=np.float32)\n"
        f"with open_runner({str(engine)!r}) as r:\n    got = predict(r, x); name = r.name\n"
        f"want = list(run_onnxruntime({str(exported)!r}, x).values())[0]\n"
        "print(json.dumps({'binding': cuda.binding(), 'diff': float(np.abs(got - want).max()), 'runner': name}))"
    )
    done = _python(code, "pycuda")
    assert done.returncode == 0, done.stderr
    import json

    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["binding"] == "cuda-python" and result["diff"] < 1e-2, result
