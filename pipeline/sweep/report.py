"""The sweep report, sweep.json and sweep.md (docs/sweep.md): each model's run rows (``kind: "run"``) and
its engines (``kind: "cell"``), laid out as in a run report so that ``edgepipe check`` gates a sweep."""

from __future__ import annotations

import time
from typing import Any

import pipeline.sweep.adapter as edgepipe
from pipeline.sweep.cluster import node_name


def assemble(driver, specs, precisions, targets, seconds: float) -> dict[str, Any]:
    """The report of a sweep ``driver`` has run."""
    folder, address = driver.folder, driver.settings.address
    rows: list[dict[str, Any]] = []
    references: dict[str, Any] = {}
    for spec in specs:
        report = driver.model_reports.get(spec.name) or {}
        references[spec.name] = report.get("reference") or {}
        for row in report.get("rows", []):
            rows.append({**row, "kind": "run", "model": spec.name, "artifact": f"{spec.name}/{row['artifact']}"})
    for cell in driver.cells:
        named = {key: getattr(cell, key) for key in ("artifact", "model", "precision", "target")}
        rows.append({"kind": "cell", "role": "artifact", "format": "TensorRT", **named, **cell.row})
    states = [r["status"].split(":")[0] for r in rows if r["kind"] == "cell"]
    counts = {name: states.count(name) for name in ("built", "reused", "skipped", "failed")}
    model_problems = {name: _model_problem(r) for name, r in driver.model_reports.items() if _model_problem(r)}
    return {
        "format": edgepipe.RUN_REPORT_FORMAT,
        "kind": "sweep",
        "edgepipe": edgepipe.EDGEPIPE_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "folder": str(folder),
        "model": ",".join(spec.name for spec in specs),
        "data": next((r.get("data") for r in driver.model_reports.values() if r.get("data")), None),
        "precisions": list(precisions),
        "targets": list(targets),
        "reference": references,
        "rows": rows,
        "cells": counts,
        "submitted": driver.submitted,
        "stopped_by": driver.stopped_by,
        "model_problems": model_problems,
        "ok": not counts["failed"] and not model_problems and not driver.stopped_by,
        "cluster": {"address": address, "nodes": [n.describe() for n in driver.nodes]},
        "model_reports": {
            spec.name: f"{spec.name}/report.json" for spec in specs if (folder / spec.name / "report.json").is_file()
        },
        "seconds": round(seconds, 2),
        "timings": driver.timings,
    }


def _model_problem(report: dict[str, Any]) -> str | None:
    failed = [f"{name} failed" for name, stage in report.get("stages", {}).items() if stage.get("status") == "failed"]
    return report.get("error") or "; ".join(failed) or None


def to_markdown(report: dict[str, Any]) -> str:
    counts = report["cells"]
    lines = [
        f"# edgepipe sweep: {len(report['reference'])} models x {len(report['precisions'])} precisions x {len(report['targets'])} targets",
        "",
        f"{sum(counts.values())} cells: {counts['built']} built, {counts['reused']} reused, {counts['skipped']} skipped, {counts['failed']} failed; "
        f"{report['submitted']} tasks submitted to Ray ({report['cluster']['address']}, {len(report['cluster']['nodes'])} nodes); took {report['seconds']:.1f} s.",
        "",
        "| model | precision | target | status | node | build (s) | measured on the GPU | top-1 (%) | vs PyTorch (pts) "
        "| latency (ms) | engine | sha256 |",
        "|---|---|---|---|---|---:|---|---:|---:|---:|---|---|",
    ]
    for row in (r for r in report["rows"] if r["kind"] == "cell"):
        lines.append(
            f"| {row['model']} | {row['precision']} | {row['target']} | {row['status']} | {node_name(row)} | {edgepipe.cell(row.get('build_seconds'), '.2f')} | "
            f"{row.get('validation') or ''} | {edgepipe.cell(row.get('top1'), '.2f')} | {edgepipe.cell(row.get('delta'), '+.2f')} | {edgepipe.cell(row.get('latency_ms'), '.3f')} | "
            f"{row.get('engine') or ''} | {(row.get('sha256') or '')[:12]} |"
        )
    models = "| artifact | status | top-1 (%) | vs PyTorch (pts) | agreement (%) | latency (ms) |"
    lines += ["", "## Models (target-independent stages, on the driver)", "", models, "|---|---|" + "---:|" * 4]
    for row in (r for r in report["rows"] if r["kind"] == "run"):
        lines.append(
            f"| {row['artifact']} | {row['status']} | {edgepipe.cell(row.get('top1'), '.2f')} | {edgepipe.cell(row.get('delta'), '+.2f')} | "
            f"{edgepipe.cell(row.get('agreement'), '.2f')} | {edgepipe.cell(row.get('latency_ms'), '.3f')} |"
        )
    for name, problem in report["model_problems"].items():
        lines.append(f"\n{name}: {problem}")
    lines += ["", "## Cluster", "", "| node | targets | GPU | TensorRT | edgepipe | Ray | Python |", "|" + "---|" * 7]
    for node in report["cluster"]["nodes"]:
        flavours = ", ".join(f"{k} {v['version']}" for k, v in node.get("flavours", {}).items()) or "none"
        targets = ", ".join(f"{t}: {n:g}" for t, n in node["targets"].items()) or "none"
        lines.append(
            f"| {node_name(node)} | {targets} | {node.get('gpu') or 'none'} | {flavours} | "
            f"{node.get('edgepipe')} | {node.get('ray')} | {node.get('python')} |"
        )
    return "\n".join(lines) + "\n"
