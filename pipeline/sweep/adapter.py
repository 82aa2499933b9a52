"""The one room of the sweep that calls into the rest of edgepipe.

The sweep reads the names below as ``edgepipe.NAME`` (ruff's unused-import check is off for this file),
so when a stage moves only this file is re-pointed; shared types (``EdgepipeError``, ``Precision``) are
imported where used. ``pipeline.run`` and the model zoo import torch, so they are imported when called:
every node answers the version probe, and a cell that only builds an engine never needs torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline import __version__ as EDGEPIPE_VERSION
from pipeline import bench, build, validate
from pipeline.artifacts import (
    ARTIFACT_FORMAT,
    Artifact,
    Kind,
    atomic_output,
    manifest_path,
    read_manifest,
    write_json_atomic,
)
from pipeline.check import REPORT_FORMAT as RUN_REPORT_FORMAT
from pipeline.cuda import current_compute_capability as gpu_compute_capability
from pipeline.defaults import BENCH_WARMUP_MS
from pipeline.digest import sha256_bytes, sha256_file
from pipeline.errors import EdgepipeError
from pipeline.images import DIGITS, PreprocessFlags  # DIGITS: the bundled data, which a models file may name
from pipeline.precision import ALL as PRECISIONS
from pipeline.precision import Precision, parse_list
from pipeline.progress import info
from pipeline.report import latency
from pipeline.report import write as write_report
from pipeline.tables import cell
from pipeline.tensorrt.backend import TENSORRT, TENSORRT_RTX, get_backend, installed_backends
from pipeline.tensorrt.options import cc_key


def prepare_model(model: Any, folder: Path, precisions: tuple[Precision, ...], settings: dict[str, Any]):
    """The target-independent stages of one ``SweepModel`` into ``folder`` with ``edgepipe run``'s
    ``settings`` (reusing what is current): the run report."""
    from pipeline import run  # imports torch: only the driver, when it prepares a model

    own = model.checkpoint or model.onnx
    preprocess = PreprocessFlags.parse(file=model.preprocess) if model.preprocess else None
    given = {"checkpoint": model.checkpoint, "onnx_model": model.onnx, "labels": model.labels, "preprocess": preprocess}
    return run.run(model=None if own else model.name, precisions=precisions, output=folder, **given, **settings)


def onnx_models(report: dict[str, Any], folder: Path) -> dict[Precision, Path]:
    """The ONNX model of each precision the run made, read from its report (rows name files in ``folder``;
    a run that starts from an ONNX imports it into ``folder`` first, as every run does)."""
    made = {}
    for row in report.get("rows", []):
        if row.get("format") == "ONNX" and row.get("file"):
            path = folder / row["file"]
            source = Path(report["source"]["file"])
            made[Precision(row["precision"])] = path if path.is_file() or source.name != row["file"] else source
    return made


def reference_of(report: dict[str, Any]) -> Path | None:
    """The model engines are measured against: the run's PyTorch checkpoint, else its FP32 ONNX."""
    reference = report.get("source", {}).get("file")
    return Path(reference) if reference and Path(reference).is_file() else None


def stage_problems(report: dict[str, Any]) -> str:
    """The stages of the run that failed or were skipped, with their reasons: "train failed: ...; export skipped: ..."."""
    return "; ".join(
        f"{name} {stage['status']}" + (f": {stage['reason']}" if stage.get("reason") else "")
        for name, stage in report.get("stages", {}).items()
        if stage.get("status") in ("failed", "skipped")
    )


def build_engine(onnx_path: Path, engine_path: Path, compute_capability: str, backend: str) -> dict[str, Any]:
    """A real engine of ``onnx_path`` at the precision the ONNX has, for one target GPU."""
    return build.build_engine(
        onnx_path,
        precision=None,
        save_engine=engine_path,
        backend=backend,
        compute_capability=[compute_capability],
        force=True,
    )


def bench_engine(engine: Path, batches: tuple[int, ...], seconds: float) -> dict[str, Any]:
    return bench.bench([str(engine)], batches=batches, duration_s=seconds, warmup_ms=BENCH_WARMUP_MS, progress=False)


def model_names() -> list[str]:
    import models  # the zoo imports torch: only when a sweep checks its model names

    return models.names()


def tensorrt_flavours() -> dict[str, dict[str, Any]]:
    """The TensorRT flavours installed here: {name: {"version": ..., "targets": the compute capabilities
    it builds for ahead of time (none for standard TensorRT, which builds for its own GPU)}}."""
    flavours = {}
    for name in installed_backends():
        try:
            chosen = get_backend(name)
        except EdgepipeError:
            continue  # installed but not loadable (missing shared libraries): it cannot build
        flavours[name] = {"version": chosen.version, "targets": chosen.compute_capability_targets()}
    return flavours


def engine_is_current(
    engine: Path, onnx_sha: str, precision: Precision, cc: str, builders: set[tuple[str, str]]
) -> bool:
    """True when ``engine`` is intact and its manifest says it was built from this ONNX, at this
    precision, for ``cc``, by a builder (flavour, version) the cluster runs."""
    if not engine.is_file():
        return False
    found = Artifact.open(engine)
    manifest = found.manifest
    if manifest.get("format") != ARTIFACT_FORMAT or manifest.get("kind") != Kind.ENGINE or not found.intact():
        return False
    targets = manifest.get("target_compute_capabilities") or [manifest.get("gpu_compute_capability")]
    return (
        found.made_from.get("onnx") == onnx_sha
        and found.precision is precision
        and cc in targets
        and (found.backend, manifest.get("backend_version")) in builders
    )


def engine_fields(engine: Path, model_dir: Path) -> dict[str, Any]:
    """What a sweep row says of an engine, from its manifest."""
    manifest = read_manifest(engine) or {}
    recorded = ("sha256", "bytes", "backend", "backend_version", "build_seconds")
    return {"engine": f"{model_dir.name}/{engine.name}", **{key: manifest.get(key) for key in recorded}}
