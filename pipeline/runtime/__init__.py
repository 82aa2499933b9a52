"""Opening a runner for any artifact: one table from kind to runtime, the engine check first.

    with open_runner(Artifact.open("model.int8.onnx")) as runner:
        logits = predict(runner, images)

``device`` places PyTorch and ONNX Runtime; engines run on the GPU, checked against the installed
TensorRT and the GPU (from their manifest) before anything touches it; without a GPU, ``NoGpuError``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pipeline.artifacts import Artifact, Kind
from pipeline.cuda import current_compute_capability
from pipeline.errors import EdgepipeError
from pipeline.modelspec import ModelCode
from pipeline.runner import NoGpuError, Runner, batch_step, predict, predict_batch
from pipeline.tensorrt.backend import BACKENDS, check_engine_runtime, get_backend


def _pytorch(artifact: Artifact, device: str, cuda_graph: bool, code: ModelCode) -> Runner:
    from pipeline.runtime.pytorch import TorchRunner  # imports torch: only for checkpoints

    return TorchRunner.from_checkpoint(artifact.path, device=device, code=code)


def _onnx(artifact: Artifact, device: str, cuda_graph: bool, code: ModelCode) -> Runner:
    try:
        import onnxruntime  # noqa: F401 - only asked whether it is installed; the runner imports it
    except ModuleNotFoundError:
        from pipeline.runtime.ort import OnnxReferenceRunner  # numpy only: the light install's ONNX runner

        return OnnxReferenceRunner(artifact.path)
    from pipeline.runtime.ort import OnnxRuntimeRunner  # imports onnxruntime: only for ONNX models

    return OnnxRuntimeRunner(artifact.path, device=device)


def _engine(artifact: Artifact, device: str, cuda_graph: bool, code: ModelCode, recorded: bool = True) -> Runner:
    backend = get_backend(artifact.backend if artifact.backend in BACKENDS else "auto")
    device_cc = current_compute_capability()
    if recorded:
        check_engine_runtime(artifact.path, backend, device_cc)
    if device_cc is None:
        raise NoGpuError(
            f"running TensorRT engine {artifact.path} needs an NVIDIA GPU, and this machine has none",
            fix="run it on a GPU host; here, validate and bench the .onnx it was built from",
        )
    from pipeline.runtime.engine import TensorRTRunner  # imports pycuda or cuda-python: only on a GPU host

    return TensorRTRunner(artifact.path.read_bytes(), backend, cuda_graph=cuda_graph, label=artifact.name)


def open_unrecorded_engine(artifact: Artifact) -> Runner:
    """The runner of an engine built outside edgepipe (trtexec on the device, by a bundle's build.sh), which
    has no manifest to check against this runtime: TensorRT's own deserialization is the check."""
    return _engine(artifact, "cuda", cuda_graph=False, code=ModelCode(), recorded=False)


RUNNERS: dict[Kind, Callable[[Artifact, str, bool, ModelCode], Runner]] = {
    Kind.CHECKPOINT: _pytorch,
    Kind.ONNX: _onnx,
    Kind.ENGINE: _engine,
}


def open_runner(
    artifact: Artifact | str | Path, device: str = "cpu", cuda_graph: bool = False, code: ModelCode = ModelCode()
) -> Runner:
    """The runner for a checkpoint, an ONNX model or a TensorRT engine; ``code``: the user code a checkpoint's
    model may be rebuilt from (--model, --trust-model-code)."""
    if not isinstance(artifact, Artifact):
        artifact = Artifact.open(artifact)
    opener = RUNNERS.get(artifact.kind)
    if opener is None:
        raise EdgepipeError(
            f"{artifact.path} is a {artifact.kind}, not a model",
            fix="pass an .onnx model, a .engine/.plan file or a .pt checkpoint",
        )
    return opener(artifact, device, cuda_graph, code)
