"""The run report, report.json (which ``edgepipe check`` reads) and report.md: one row per artifact, the
PyTorch reference first, then the ONNX and TensorRT artifacts per precision."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.artifacts import write_json_atomic, write_text_atomic
from pipeline.check import REPORT_FORMAT
from pipeline.machine import host
from pipeline.tables import cell

FORMATS = {"pytorch": "PyTorch", "onnx": "ONNX", "engine": "TensorRT"}


def assemble(
    folder: Path, head: dict[str, Any], validation, bench, artifacts: dict[str, Path | None], stages
) -> dict[str, Any]:
    """The report of a run. ``head``: model, data, source ({"start": "training" | "checkpoint" | "onnx",
    "file": the reference}), engines (why they were skipped, or None) and seconds."""
    source = head["source"]
    measured = (validation or {}).get("reference") or {}
    reference = {"format": "ONNX" if source["start"] == "onnx" else "PyTorch", "file": source.get("file"), **measured}
    return {
        "format": REPORT_FORMAT,
        "edgepipe": __version__,
        "folder": str(folder),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **head,
        "reference": reference,
        "rows": [_row(i, path, validation, bench, reference) for i, path in artifacts.items()],
        "engines": head.get("engines") or "built",
        "bench": {k: v for k, v in (bench or {}).items() if k != "rows"},
        "stages": stages,
        "seconds": round(head["seconds"], 2),
        "machine": host(),
    }


def _row(artifact_id: str, path: Path | None, validation, bench, reference: dict[str, Any]) -> dict[str, Any]:
    """One artifact's row: what it is, its figures from the validate stage, its latency from bench."""
    kind, _, precision = artifact_id.partition("-")
    row: dict[str, Any] = {
        "artifact": artifact_id,
        "role": "reference" if kind == "pytorch" else "artifact",
        "format": FORMATS[kind],
        "precision": precision or "fp32",
        "file": path.name if path else None,
        "size_mb": round(path.stat().st_size / 2**20, 3) if path and path.is_file() else None,
    }
    if kind == "pytorch":
        status = "ok" if reference.get("top1") is not None else "error: no PyTorch reference"
        row.update(status=status, top1=reference.get("top1"), delta=0.0, agreement=100.0)
    else:
        val_rows = {Path(r["artifact"]).name: r for r in (validation or {}).get("rows", [])}
        measured = val_rows.get(path.name, {}) if path else {}
        row.update({k: measured.get(k) for k in ("top1", "delta", "agreement", "max_abs_diff", "cosine")})
        row["status"] = measured.get("status", "error: not validated")
    measured_as = "pytorch" if kind == "pytorch" else (path.name if path else "")
    row.update(latency([r for r in (bench or {}).get("rows", []) if _measured_as(r) == measured_as]))
    if row["status"] == "ok" and row.get("latency_status", "ok") != "ok" and kind == "engine":
        row["status"] = row["latency_status"]
    return row


def _measured_as(bench_row: dict[str, Any]) -> str:
    """What a bench row measured: "pytorch", or the artifact's file name."""
    runtime, artifact = str(bench_row.get("runtime", "")), str(bench_row.get("artifact", ""))
    return "pytorch" if runtime.startswith("pytorch") else Path(artifact).name


def latency(bench_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median latency at the smallest batch measured, throughput at the largest."""
    ok = sorted((r for r in bench_rows if r.get("status") == "ok"), key=lambda r: r["batch"])
    if not ok:
        status = bench_rows[0].get("status") if bench_rows else "not measured"
        return {"latency_ms": None, "throughput": None, "latency_status": status}
    smallest = {"latency_ms": ok[0]["median_ms"], "latency_batch": ok[0]["batch"], "latency_status": "ok"}
    return {**smallest, "throughput": ok[-1]["throughput"], "throughput_batch": ok[-1]["batch"]}


def to_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# edgepipe run: {title(report)}",
        "",
        f"{reference_line(report)} Engines: {report['engines']}. Run took {report['seconds']:.1f} s.",
        *model_lines(report),
        "",
        "| artifact | format | precision | status | size (MB) | top-1 (%) | vs PyTorch (pts) | agreement (%) | latency (ms) | throughput (img/s) |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['artifact']} | {row['format']} | {row['precision']} | {row['status']} | {cell(row['size_mb'], '.2f')} | "
            f"{cell(row['top1'], '.2f')} | {cell(row['delta'], '+.2f')} | {cell(row['agreement'], '.2f')} | "
            f"{cell(row.get('latency_ms'), '.3f')} | {cell(row.get('throughput'), '.0f')} |"
        )
    batches = sorted({r[key] for r in report["rows"] for key in ("latency_batch", "throughput_batch") if r.get(key)})
    if batches:
        device = report["bench"].get("device", "this machine")
        lines += [
            "",
            f"Latency is the median at batch {min(batches)}; throughput at batch {max(batches)}, on {device}.",
        ]
    if report.get("plot"):
        lines += ["", f"![latency against accuracy]({report['plot']})"]
    machine = report["machine"]
    system = f"{machine['platform']}, {machine['cpus']} CPUs, {machine['memory_gb']} GiB"
    lines += ["", "## Machine and tools", "", system, ""]
    lines += [f"- {name} {version}" for name, version in sorted(machine["tools"].items())]
    lines += ["", "## Stages", "", "| stage | status | seconds |", "|---|---|---:|"]
    lines += [
        f"| {name} | {s['status']}{': ' + s['reason'] if s.get('reason') else ''} | {s['seconds']:.2f} |"
        for name, s in report["stages"].items()
    ]
    return "\n".join(lines) + "\n"


def title(report: dict[str, Any]) -> str:
    """ "se_resnet on digits", and the file the run started from when it did not train."""
    source = report.get("source") or {}
    name = Path(str(source.get("file"))).name
    start = f", from {name}" if source.get("start") in ("checkpoint", "onnx") and name != report["model"] else ""
    return f"{report['model']} on {Path(str(report['data'])).name}{start}"


def model_lines(report: dict[str, Any]) -> list[str]:
    """The PyTorch model's spec, input size and the sha256 of the weights it started from, when known."""
    source = report.get("source") or {}
    spec = (source.get("model_spec") or {}).get("spec")
    if not spec:
        return []
    shape = "x".join(str(v) for v in source.get("input_shape") or [])
    weights = f", weights sha256 {source['weights_sha256']}" if source.get("weights_sha256") else ""
    return ["", f"Model: --model {spec}{f' at {shape}' if shape else ''}{weights}."]


def reference_line(report: dict[str, Any]) -> str:
    """Which model every artifact was measured against, and its top-1 when the validate stage measured it."""
    reference = report["reference"]
    name = Path(str(reference.get("file"))).name if reference.get("file") else "none"
    if reference.get("format") == "ONNX":
        runner = f" ({reference['runner']})" if reference.get("runner") else ""
        what = f"Reference (FP32 ONNX on ONNX Runtime): {name}{runner}"
    else:
        what = f"Reference (PyTorch checkpoint): {name}"
    if reference.get("top1") is None:
        return f"{what}, not measured (see Stages)."
    return f"{what}, top-1 {reference['top1']:.2f}% on {reference.get('samples', '?')} held-out images."


def write(report: dict[str, Any], folder: Path, name: str = "report", markdown=to_markdown) -> None:
    """``name``.json and ``name``.md in ``folder`` (a sweep's report too)."""
    write_json_atomic(folder / f"{name}.json", report)
    write_text_atomic(folder / f"{name}.md", markdown(report))
