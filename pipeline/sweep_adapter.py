"""The one place where `edgepipe sweep` calls into the rest of edgepipe.

The sweep (plan, cluster, cell tasks, report) speaks only to the functions below. Each is a thin
call into a stage module; when a stage moves, this file is the only one to re-point.
Stage modules import torch, ONNX Runtime or TensorRT, so each call imports its module when it
is made: `edgepipe --help` and the Ray driver's planning stay light.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# --- calls into edgepipe (re-point here) -----------------------------------------------------------

from pipeline import __version__ as EDGEPIPE_VERSION
from pipeline.artifacts import atomic_output, read_manifest, sha256_file
from pipeline.progress import info

RUN_REPORT_FORMAT = 1  # pipeline.check.REPORT_FORMAT: the report format `edgepipe check` reads
PRECISIONS = ("fp32", "fp16", "int8")
ONNX_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
DEFAULT_MAX_DROP = 0.5  # pipeline.run.DEFAULT_MAX_DROP
TENSORRT, TENSORRT_RTX = "tensorrt", "tensorrt-rtx"  # pipeline.backend's names of the two flavours


def prepare_model(
    name: str, checkpoint: str | None, onnx_model: str | None, folder: Path, data: str | None,
    precisions: tuple[str, ...], epochs: int | None, seed: int, bench_batches: tuple[int, ...],
    bench_seconds: float, max_drop: float | None, strict: bool, force: bool,
) -> dict[str, Any]:
    """The target-independent stages of one model into ``folder`` (reusing what is current)."""
    from pipeline import run

    return run.run(
        model=None if (checkpoint or onnx_model) else name, checkpoint=checkpoint, onnx_model=onnx_model,
        data=data, precisions=precisions, output=folder, strict=strict, force=force, epochs=epochs, seed=seed,
        engines=False, bench_batches=bench_batches, bench_seconds=bench_seconds, max_drop=max_drop,
    )


def build_engine(onnx_path: Path, engine_path: Path, compute_capability: str, backend: str) -> dict[str, Any]:
    """A real engine of ``onnx_path`` at the precision the ONNX has, for one target GPU."""
    from pipeline import build

    return build.build_engine(onnx_path, precision=None, save_engine=engine_path, backend=backend,
                              compute_capability=[compute_capability], force=True)


def validate_engine(checkpoint: Path | None, artifacts: list[Path], data: str | None) -> dict[str, Any]:
    """Rows for ``artifacts`` against the PyTorch ``checkpoint`` (or, without one, the FP32 ONNX among them)."""
    from pipeline import validate

    return validate.validate(checkpoint, artifacts, data=data)


def bench_engine(engine: Path, batches: tuple[int, ...], seconds: float) -> dict[str, Any]:
    from pipeline import bench

    return bench.bench([str(engine)], batches=batches, duration_s=seconds, warmup_ms=100, progress=False)


def model_names() -> list[str]:
    import models

    return models.names()


def gpu_compute_capability() -> str | None:
    """"X.Y" of this machine's GPU 0, or None without an NVIDIA GPU."""
    from pipeline import backend

    return backend.current_compute_capability()


def tensorrt_flavours() -> dict[str, dict[str, Any]]:
    """The TensorRT flavours installed here: {name: {"version": ..., "targets": [...]}}.

    ``targets`` are the compute capabilities TensorRT-RTX builds for ahead of time; standard
    TensorRT builds only for the GPU it runs on, so its list is empty.
    """
    from pipeline import backend
    from pipeline.errors import EdgepipeError

    flavours = {}
    for name in backend.installed_backends():
        try:
            chosen = backend.get_backend(name)
        except EdgepipeError:
            continue  # installed but not loadable (missing shared libraries): it cannot build
        flavours[name] = {"version": chosen.version, "targets": chosen.compute_capability_targets()}
    return flavours


# --- end of the calls into edgepipe ----------------------------------------------------------------

__all__ = [
    "EDGEPIPE_VERSION", "atomic_output", "read_manifest", "sha256_file", "info", "RUN_REPORT_FORMAT", "PRECISIONS",
    "ONNX_FILES", "DEFAULT_MAX_DROP", "prepare_model", "build_engine", "validate_engine", "bench_engine", "model_names",
    "gpu_compute_capability", "tensorrt_flavours", "TENSORRT", "TENSORRT_RTX",
]
