"""A model against a bundle's golden outputs: the engine built on the device, or an ONNX; no torch, no ONNX Runtime.

    edgepipe validate bundle/ model.fp16.engine

The model must be one the golden outputs were made for, else it is refused before anything runs
(docs/device.md tells how it is known). Every output is compared elementwise with the FP32 golden
output under its precision's tolerance, as Polygraphy does: a value fails when it is off by more
than both atol and rtol x |golden|.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.artifacts import Artifact, Kind
from pipeline.deploy.golden import Golden, read
from pipeline.digest import sha256_file
from pipeline.errors import EdgepipeError
from pipeline.runtime import open_runner, open_unrecorded_engine, predict_batch

_REPACKAGE = (
    "pass a model of this bundle or an engine built from one, or package this model: edgepipe package MODEL.onnx ..."
)


@dataclass(frozen=True)
class _Lineage:
    """Which of the bundle's ONNX a model is (or was built from), how that is known, and its precision."""

    onnx: str
    how: str  # "sha256" | "manifest" | "build.sh"
    precision: str


def validate_golden(golden_path: str | Path, models: list[str | Path]) -> dict[str, Any]:
    """Each of ``models`` against the golden outputs of a bundle (its folder or its golden_outputs.json)."""
    golden = read(golden_path)
    artifacts = [Artifact.open(model) for model in models]
    lineages = [_lineage(golden, artifact) for artifact in artifacts]  # every refusal before anything runs
    rows = [_check(golden, artifact, lineage) for artifact, lineage in zip(artifacts, lineages)]
    return {
        "golden": str(golden.folder),
        "target": golden.record.get("target"),
        "iterations": len(golden.feeds),
        "images": int(sum(len(next(iter(feed.values()))) for feed in golden.feeds)),
        "rows": rows,
        "ok": all(row["passed"] for row in rows),
    }


def _lineage(golden: Golden, artifact: Artifact) -> _Lineage:
    models = golden.models()
    if artifact.kind is Kind.ONNX:
        digest, how, what = sha256_file(artifact.path), "sha256", "is"
    elif artifact.kind is Kind.ENGINE and artifact.made_from.get("onnx"):
        digest, how, what = artifact.made_from["onnx"], "manifest", "was built from"
    elif artifact.kind is Kind.ENGINE:
        return _built_by_script(golden, artifact, models)
    else:
        raise EdgepipeError(
            f"{artifact.path} is a {artifact.kind}; golden outputs check an ONNX model or an engine",
            fix="pass the .onnx or the .engine to check",
        )
    name = next((name for name, known in models.items() if known == digest), None)
    if name is None:
        raise EdgepipeError(
            f"{artifact.path} {what} another model than the golden outputs of {golden.folder} were made for "
            f"(sha256 {digest[:12]}, not that of {', '.join(models) or 'any model there'})",
            fix=_REPACKAGE,
        )
    precision = artifact.precision or Artifact.open(golden.bundle / name).precision
    return _Lineage(name, how, precision.value)


def _built_by_script(golden: Golden, artifact: Artifact, models: dict[str, str]) -> _Lineage:
    """An engine with no manifest: the bundle's record of what build.sh writes says what it was built from."""
    try:
        where = str(artifact.path.resolve().relative_to(golden.bundle.resolve()))
    except ValueError:
        where = None
    build = (golden.record.get("builds") or {}).get(where)
    if build is None or build["onnx"] not in models:
        raise EdgepipeError(
            f"cannot tell which model {artifact.path} was built from: it has no edgepipe manifest and is not an "
            f"engine the build.sh of {golden.bundle} writes for these golden outputs",
            fix="build it with the bundle's build.sh (in the bundle's folder), or with build-engine, which records its ONNX",
        )
    return _Lineage(build["onnx"], "build.sh", build["precision"])


def _check(golden: Golden, artifact: Artifact, lineage: _Lineage) -> dict[str, Any]:
    tolerance = golden.tolerances.get(lineage.precision)
    if tolerance is None:
        raise EdgepipeError(
            f"{golden.bundle} has no tolerance for {lineage.precision} (it has {', '.join(golden.tolerances)})",
            fix="package the bundle again with the model of that precision",
        )
    names = list(golden.outputs[0])
    pairs: dict[str, list] = {name: [] for name in names}  # (golden, got) of each feed
    opened = open_unrecorded_engine(artifact) if lineage.how == "build.sh" else open_runner(artifact)
    with opened as runner:
        runner_name = runner.name
        for feed, expected in zip(golden.feeds, golden.outputs):
            got = predict_batch(runner, next(iter(feed.values())).astype(np.float32), outputs="all")
            if len(got) != len(names):
                raise EdgepipeError(
                    f"{artifact.path} has {len(got)} outputs, the golden outputs {len(names)} ({', '.join(names)})",
                    fix=_REPACKAGE,
                )
            for name, value in zip(names, got):
                if expected[name].shape != value.shape:
                    raise EdgepipeError(
                        f"{artifact.path}'s output '{name}' has shape {value.shape}, the golden one {expected[name].shape}",
                        fix=_REPACKAGE,
                    )
                pairs[name].append((expected[name].astype(np.float64), value.astype(np.float64)))
    outputs = {name: _figures(pairs[name], tolerance) for name in names}
    return {
        "model": str(artifact.path),
        "made_from": lineage.onnx,
        "known_by": lineage.how,
        "precision": lineage.precision,
        "runner": runner_name,
        **tolerance,
        "outputs": outputs,
        "passed": all(output["passed"] for output in outputs.values()),
    }


def _figures(pairs: list[tuple[np.ndarray, np.ndarray]], tolerance: dict) -> dict[str, Any]:
    """One output against its golden values over every feed."""
    diffs = [(np.abs(got - golden), np.abs(golden)) for golden, got in pairs]
    failed = sum(int(((d > tolerance["atol"]) & (d > tolerance["rtol"] * g)).sum()) for d, g in diffs)
    elements = sum(d.size for d, _ in diffs)
    return {
        "max_abs_diff": max([0.0, *(float(d.max(initial=0.0)) for d, _ in diffs)]),
        "mean_abs_diff": sum(float(d.sum()) for d, _ in diffs) / max(elements, 1),
        "elements": elements,
        "failed_elements": failed,
        "passed": failed == 0,
    }
