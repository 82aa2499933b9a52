"""A cell of the sweep (model x precision x target GPU): its task on a worker, and what comes back.

The worker keeps nothing: the models come as bytes, the engine and its manifest go back as bytes with
their sha256 and are written only if they match (the run directory is the truth). A build error is a
result ("failed" with its reason), not an exception, so Ray retries only a worker or node that dies.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pipeline.sweep.adapter as edgepipe
from pipeline.errors import EdgepipeError
from pipeline.precision import Precision
from pipeline.sweep.cluster import parse_target, target_name


@dataclass
class Cell:
    model: str
    precision: Precision
    target: str
    row: dict[str, Any] = field(default_factory=dict)

    @property
    def cc(self) -> str:
        return parse_target(self.target)

    @property
    def artifact(self) -> str:
        return f"{self.model}/engine-{self.precision}-{self.target}"

    @property
    def engine_name(self) -> str:
        return f"model.{self.precision}.{self.target}.engine"


def previous_rows(folder: Path) -> dict[str, dict[str, Any]]:
    """Rows of the last sweep.json, so a reused engine keeps the measurements made on its GPU."""
    try:
        rows = json.loads((folder / "sweep.json").read_text())["rows"]
        return {row["artifact"]: row for row in rows if row.get("kind") == "cell"}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def receive(model_dir: Path, cell: Cell, result: dict[str, Any], onnx: Path) -> tuple[str, dict[str, Any]]:
    """(status, row fields) of a cell's result; a built engine and its manifest written into ``model_dir``."""
    where = {k: result.get(k) for k in ("host", "node_id", "pid", "gpu")}
    if result["status"] != "built":
        return f"failed: {result['reason']}", where
    engine, sha256 = model_dir / cell.engine_name, result["sha256"]
    manifest, actual = dict(result["manifest"] or {}), edgepipe.sha256_bytes(result["engine"])
    try:  # the engine is written only if it hashes to what the worker reported
        if manifest.get("sha256") != sha256:
            raise EdgepipeError(f"{engine.name} does not match the manifest built with it", fix="sweep again")
        if actual != sha256:
            raise EdgepipeError(
                f"{engine.name} arrived damaged (sha256 {actual[:12]}, the worker reported {sha256[:12]})",
                fix="sweep again; the cell is rebuilt",
            )
    except EdgepipeError as exc:
        return f"failed: {exc}", where
    with edgepipe.atomic_output(engine) as tmp:
        tmp.write_bytes(result["engine"])
    manifest.update(onnx=str(onnx), built_on={key: result[key] for key in ("host", "node_id", "gpu")})
    manifest["network_onnx"] = {**manifest.get("network_onnx", {}), "file": str(onnx)}
    edgepipe.write_json_atomic(edgepipe.manifest_path(engine), manifest)
    measured = dict(result.get("measured", {}))
    fields = {"validation": measured.pop("status", None), "seconds": result["seconds"]}
    return "built", {**where, **measured, **fields, **edgepipe.engine_fields(engine, model_dir)}


def choose_backend(target_cc: str, gpu: str | None, flavours: dict[str, dict[str, Any]]) -> tuple[str | None, str]:
    """(flavour, "") that builds for ``target_cc`` on a node with ``gpu``, or (None, why not): standard
    TensorRT builds only for its own GPU, TensorRT-RTX ahead of time for its targets on any machine."""
    if edgepipe.TENSORRT in flavours and gpu == target_cc:
        return edgepipe.TENSORRT, ""
    rtx = flavours.get(edgepipe.TENSORRT_RTX)
    if rtx and target_cc in rtx.get("targets", []):
        return edgepipe.TENSORRT_RTX, ""
    if rtx:
        return None, f"TensorRT-RTX does not build for {target_cc} and standard TensorRT with that GPU is not here"
    if edgepipe.TENSORRT in flavours:
        return None, f"standard TensorRT builds only for the GPU it runs on ({gpu or 'none here'})"
    return None, "no TensorRT flavour is installed"


def build_cell(cell: dict[str, Any], onnx_bytes: bytes, reference_bytes: bytes | None) -> dict[str, Any]:
    """Build (and where possible measure) one cell; runs inside a Ray task on the chosen node.
    ``cell["reference"]`` (".pt" or ".onnx") says what ``reference_bytes`` are."""
    import ray  # runs inside a Ray task: Ray is there

    started = time.perf_counter()
    gpu, flavours = edgepipe.gpu_compute_capability(), edgepipe.tensorrt_flavours()
    node_id = ray.get_runtime_context().get_node_id()
    result: dict[str, Any] = {"node_id": node_id, "host": socket.gethostname(), "pid": os.getpid(), "gpu": gpu}
    backend, why = choose_backend(cell["cc"], gpu, flavours)
    if backend is None:
        return {**result, "status": "failed", "reason": f"{result['host']} advertises {cell['target']} but {why}"}
    if edgepipe.sha256_bytes(onnx_bytes) != cell["onnx_sha256"]:
        damaged = f"{cell['onnx_name']} arrived damaged (sha256 differs from the driver's)"
        return {**result, "status": "failed", "reason": damaged}
    with tempfile.TemporaryDirectory(prefix="edgepipe-cell-") as tmp:
        onnx_path, engine_path = Path(tmp) / cell["onnx_name"], Path(tmp) / cell["engine_name"]
        onnx_path.write_bytes(onnx_bytes)
        try:
            built = edgepipe.build_engine(onnx_path, engine_path, cell["cc"], backend)
        except EdgepipeError as exc:
            seconds = round(time.perf_counter() - started, 3)
            return {**result, "status": "failed", "reason": str(exc), "seconds": seconds}
        engine = engine_path.read_bytes()
        result.update({key: built[key] for key in ("backend", "backend_version", "build_seconds")})
        result.update(status="built", engine=engine, sha256=edgepipe.sha256_bytes(engine))
        result["manifest"] = edgepipe.read_manifest(engine_path)
        result["measured"] = _measure(cell, engine_path, reference_bytes, gpu, result["host"], Path(tmp))
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result


def _measure(
    cell: dict[str, Any], engine: Path, reference_bytes: bytes | None, gpu: str | None, host: str, tmp: Path
) -> dict[str, Any]:
    """Top-1 against the PyTorch reference and latency, on this node's GPU when it is the target."""
    if gpu != cell["cc"]:
        has = f" (it has {target_name(gpu)})" if gpu else ""
        return {"status": f"skipped: no {cell['target']} GPU on {host}{has}"}
    measured: dict[str, Any] = {"status": "skipped: no reference model came with the cell"}
    if reference_bytes is None:
        return measured
    reference = tmp / f"reference{cell['reference']}"  # a PyTorch checkpoint (.pt), else the FP32 ONNX model
    reference.write_bytes(reference_bytes)
    try:
        row = edgepipe.validate.validate(reference, [engine], data=cell["data"])["rows"][-1]
        measured.update({k: row.get(k) for k in ("top1", "delta", "agreement", "max_abs_diff", "cosine")})
        measured["status"] = row.get("status", "ok")
        timing = edgepipe.bench_engine(engine, tuple(cell["bench_batches"]), cell["bench_seconds"])
        latency = edgepipe.latency(timing["rows"])
        if latency.pop("latency_status") == "ok":
            measured.update(latency)
    except EdgepipeError as exc:
        measured["status"] = f"error: {exc}"
    return measured
