"""summary.json and summary.md of one scripts/gpu-check.sh call: its steps, the probe's layers, the figures.

    python3 scripts/gpu_summary.py --logs LOGS_DIR --out OUT_DIR --phases install,test

Reads what the steps left in LOGS_DIR (steps.tsv, facts.log, probe.json, pytest-gpu.log,
bench.json, bench-cuda-graph.json, notes.txt) and writes OUT_DIR/summary.json, OUT_DIR/summary.md
and OUT_DIR/probe.json. Standard library only; a missing file is a missing section, never an error.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def steps(logs: Path) -> list[dict]:
    rows = []
    if (logs / "steps.tsv").is_file():
        for line in (logs / "steps.tsv").read_text().splitlines():
            parts = line.split("\t")
            if len(parts) == 3:
                rows.append({"step": parts[0], "rc": int(parts[1]), "seconds": int(parts[2])})
    return rows


def pytest_line(logs: Path) -> str | None:
    """pytest's last summary line (e.g. '9 passed, 1 skipped in 40.1s')."""
    try:
        lines = (logs / "pytest-gpu.log").read_text().splitlines()
    except OSError:
        return None
    summary = [line for line in lines if re.search(r"\d+ (passed|failed|error|skipped|deselected)", line)]
    return summary[-1].strip("= ") if summary else None


def bench_rows(result: dict | None) -> list[dict]:
    keys = ("artifact", "format", "precision", "batch", "status", "median_ms", "p99_ms", "compute_median_ms")
    return [{k: r.get(k) for k in keys} for r in (result or {}).get("rows", [])]


def ratios(rows: list[dict]) -> dict:
    """PyTorch eager FP32 median over each engine's median, per precision and batch (the issue's targets)."""
    torch = {r["batch"]: r["median_ms"] for r in rows if r["format"] == "pytorch" and r["status"] == "ok"}
    out = {}
    for r in rows:
        if r["format"] == "engine" and r["status"] == "ok" and torch.get(r["batch"]) and r["median_ms"]:
            out[f"{r['precision']}@{r['batch']}"] = round(torch[r["batch"]] / r["median_ms"], 2)
    return out


def probe_timing(logs: Path) -> dict | None:
    """The timing layer of the bench phase's probe: TensorRT-RTX engines' GPU compute per model and batch."""
    for entry in (read_json(logs / "probe-timing.json") or {}).get("layers", []):
        if entry["layer"] == "timing":
            return {k: v for k, v in entry.items() if k != "traceback"}
    return None


def summarize(logs: Path, phases: str) -> dict:
    probe = read_json(logs / "probe.json") or read_json(logs / "probe-timing.json") or {}
    bench = read_json(logs / "bench.json")
    rows = bench_rows(bench)
    notes = (logs / "notes.txt").read_text().strip() if (logs / "notes.txt").is_file() else None
    facts = (logs / "facts.log").read_text()[:3000] if (logs / "facts.log").is_file() else None
    return {
        "phases": phases,
        "steps": steps(logs),
        "notes": notes,
        "facts": facts,
        "layers": [{k: v for k, v in layer.items() if k != "traceback"} for layer in probe.get("layers", [])],
        "pytest_gpu": pytest_line(logs),
        "bench": {"device": (bench or {}).get("device"), "rows": rows, "speedup_vs_pytorch_eager": ratios(rows)},
        "bench_cuda_graph": bench_rows(read_json(logs / "bench-cuda-graph.json")),
        "probe_timing": probe_timing(logs),
    }


def markdown(summary: dict) -> str:
    lines = [f"# edgepipe GPU check: {summary['phases']}", ""]
    if summary["facts"]:
        lines += ["```", summary["facts"].strip(), "```", ""]
    if summary["notes"]:
        lines += [f"Note: {summary['notes']}", ""]
    lines += ["| step | rc | seconds |", "|---|---:|---:|"]
    lines += [f"| {s['step']} | {s['rc']} | {s['seconds']} |" for s in summary["steps"]]
    lines += ["", "| layer | result | detail |", "|---|---|---|"]
    for layer in summary["layers"]:
        state = {True: "ok", False: "FAILED", None: "skipped"}[layer["ok"]]
        detail = (
            layer.get("error")
            or layer.get("skipped")
            or json.dumps({k: v for k, v in layer.items() if k not in ("layer", "ok")}, default=str)
        )
        lines.append(f"| {layer['layer']} | {state} | {detail.replace('|', '/')[:600]} |")
    if summary["pytest_gpu"]:
        lines += ["", f"pytest -m gpu: {summary['pytest_gpu']}"]
    rows = summary["bench"]["rows"]
    if rows:
        lines += [
            "",
            "| artifact | format | precision | batch | status | median (ms) | p99 (ms) |",
            "|---|---|---|---:|---|---:|---:|",
        ]
        lines += [
            f"| {Path(str(r['artifact'])).name} | {r['format']} | {r['precision']} | {r['batch']} | {r['status']} | "
            f"{r['median_ms']} | {r['p99_ms']} |"
            for r in rows
        ]
        lines += ["", f"PyTorch eager FP32 / engine (median): {summary['bench']['speedup_vs_pytorch_eager']}"]
    timing = summary["probe_timing"]
    if timing:
        lines += ["", f"Probe timing ({timing.get('how', '')}): {timing.get('error') or ''}"]
        lines += [f"- {json.dumps(row)}" for row in timing.get("rows", [])]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--phases", required=True)
    args = parser.parse_args()
    summary = summarize(args.logs, args.phases)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    (args.out / "summary.md").write_text(markdown(summary))
    if (args.logs / "probe.json").is_file():
        shutil.copy(args.logs / "probe.json", args.out / "probe.json")
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
