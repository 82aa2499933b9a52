"""A cell of the sweep (model x precision x target GPU) and what comes back for it.

An engine that comes back is written only if it hashes to what the worker reported and matches the
manifest built with it: the run directory is the truth, whatever happened to the workers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pipeline.sweep.adapter as edgepipe
import pipeline.sweep.cluster as clustermod
from pipeline.errors import EdgepipeError
from pipeline.precision import Precision
from pipeline.sweep.targets import parse_target


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
        return {
            row["artifact"]: row
            for row in json.loads((folder / "sweep.json").read_text())["rows"]
            if row.get("kind") == "cell"
        }
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def receive(model_dir: Path, cell: Cell, result: dict[str, Any], onnx: Path) -> tuple[str, dict[str, Any]]:
    """(status, row fields) of a cell's result; a built engine and its manifest written into ``model_dir``."""
    where = {k: result.get(k) for k in ("host", "node_id", "pid", "gpu")}
    if result["status"] != "built":
        return f"failed: {result['reason']}", where
    engine = model_dir / cell.engine_name
    manifest = dict(result["manifest"] or {})
    try:
        if manifest.get("sha256") != result["sha256"]:
            raise EdgepipeError(f"{engine.name} does not match the manifest built with it", fix="sweep again")
        clustermod.receive_file(engine, result["engine"], result["sha256"])
    except EdgepipeError as exc:
        return f"failed: {exc}", where
    manifest.update(
        onnx=str(onnx), built_on={"host": result["host"], "node_id": result["node_id"], "gpu": result["gpu"]}
    )
    manifest["network_onnx"] = {**manifest.get("network_onnx", {}), "file": str(onnx)}
    edgepipe.write_json_atomic(edgepipe.manifest_path(engine), manifest)
    measured = dict(result.get("measured", {}))
    validation = measured.pop("status", None)
    fields = {**measured, "validation": validation, "seconds": result["seconds"]}
    return "built", {**where, **fields, **edgepipe.engine_fields(engine, model_dir)}
