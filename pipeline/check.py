"""CI accuracy-regression gate: compare a run report with a stored baseline, metric by metric.

Like MMDeploy's regression check, an artifact's top-1 is compared as its change vs the fresh PyTorch run in
the same report (``delta``), so retraining that moves every number together is not mistaken for a quantization
regression; the PyTorch row is compared on its own top-1. A tolerance (YAML) is how far a metric may move the
wrong way, in its own unit or "N%" of the baseline (``top1: 0.3``, ``latency_ms: 10%``). A sweep's engine cells
count ``built``/``reused`` as ok, ``skipped`` as no regression, ``failed`` always as one; a bench result is one
row per artifact and batch (docs/device.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.artifacts import write_json_atomic
from pipeline.errors import EdgepipeError
from pipeline.yamlfile import read_yaml

# metric -> True when higher is better
METRICS = {
    "top1": True,
    "agreement": True,
    "cosine": True,
    "max_abs_diff": False,
    "latency_ms": False,
    "throughput": True,
    "size_mb": False,
}
DEFAULT_TOLERANCES = {"top1": 0.3, "agreement": 0.5, "latency_ms": "10%"}
REPORT_FORMAT = 1
OK_STATUSES = ("ok", "built", "reused")  # a run row measured; a sweep cell built now or reused from before
RUN_REPORT_FIX = "pass the report.json written by 'edgepipe run'"


def load_report(path: str | Path, role: str = "report") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        fix = RUN_REPORT_FIX if role == "report" else "create one with --update-baseline"
        raise EdgepipeError(f"{role} {path} does not exist", fix=fix)
    try:
        report = json.loads(path.read_text())
    except ValueError as exc:
        raise EdgepipeError(f"{role} {path} is not valid JSON ({exc.msg} at line {exc.lineno})", fix=RUN_REPORT_FIX)
    if isinstance(report, dict) and "rows" in report and "settings" in report and "reference" not in report:
        return _from_bench(report)
    if not isinstance(report, dict) or "rows" not in report or "reference" not in report:
        raise EdgepipeError(
            f"{role} {path} is not an edgepipe run report",
            fix=f"{RUN_REPORT_FIX}, or the result of 'edgepipe bench --json-out'",
        )
    if report.get("format") != REPORT_FORMAT:
        raise EdgepipeError(
            f"{role} {path} has report format {report.get('format')}, this edgepipe reads {REPORT_FORMAT}",
            fix="run 'edgepipe run' again with this edgepipe, then 'edgepipe check --update-baseline' if it is the baseline",
        )
    return report


def _from_bench(result: dict[str, Any]) -> dict[str, Any]:
    """A bench result as a report: one row per artifact and batch, its median as ``latency_ms``."""
    rows = [
        {
            "artifact": f"{Path(str(r['artifact'])).name} batch {r['batch']}",
            "status": r.get("status"),
            "latency_ms": r.get("median_ms"),
            "throughput": r.get("throughput"),
        }
        for r in result["rows"]
    ]
    bench = {k: v for k, v in result.items() if k != "rows"}
    return {"format": REPORT_FORMAT, "model": None, "data": None, "reference": None, "rows": rows, "bench": bench}


def power_state(report: dict[str, Any]) -> str | None:
    """ "nvpmodel mode 0 with jetson_clocks on" for a report measured on a Jetson; None otherwise."""
    record = (report.get("bench") or {}).get("jetson") or {}
    if not record.get("jetson"):
        return None
    clocks = "on" if record.get("jetson_clocks") else "off"
    return f"nvpmodel mode {record.get('nvpmodel')} with jetson_clocks {clocks}"


def _check_comparable(report: dict[str, Any], baseline: dict[str, Any], tolerances) -> None:
    """Refuse reports of another model or dataset, and latency measured in different power modes or clock states."""
    for key in ("model", "data"):
        if report.get(key) != baseline.get(key):
            raise EdgepipeError(
                f"the baseline is for {key} {baseline.get(key)!r}, the report for {report.get(key)!r}",
                fix="compare reports of the same model and dataset, or write a new baseline with --update-baseline",
            )
    timed = sorted(set(tolerances) & {"latency_ms", "throughput"})
    now, then = power_state(report), power_state(baseline)
    if timed and now and then and now != then:
        raise EdgepipeError(
            f"the baseline's latency was measured in {then}, the report's in {now}; "
            "latency across power modes or clock states does not compare",
            fix="measure both in one state (e.g. sudo nvpmodel -m 0 && sudo jetson_clocks), or compare accuracy "
            f"only: pass --tolerances with no {' or '.join(timed)}",
        )


def load_tolerances(path: str | Path | None) -> dict[str, tuple[float, bool]]:
    """Parse the tolerance file into metric -> (amount, relative)."""
    raw: Any = DEFAULT_TOLERANCES
    fix = "write one 'metric: amount' per line, e.g. 'top1: 0.3' or 'latency_ms: 10%'"
    if path is not None:
        missing = "pass a YAML file like 'top1: 0.3' or leave out --tolerances"
        raw = read_yaml(path, "tolerance file", fix=fix, missing_fix=missing)
    if not isinstance(raw, dict) or not raw:
        raise EdgepipeError(f"tolerance file {path} holds no 'metric: amount' lines", fix=fix)
    return {str(metric): _parse_tolerance(str(metric), amount, path) for metric, amount in raw.items()}


def _parse_tolerance(metric: str, amount: Any, path) -> tuple[float, bool]:
    if metric not in METRICS:
        raise EdgepipeError(
            f"tolerance file {path} names unknown metric '{metric}'", fix=f"use one of: {', '.join(METRICS)}"
        )
    text = str(amount).strip()
    relative = text.endswith("%")
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        raise EdgepipeError(
            f"tolerance for {metric} is '{amount}', not a number", fix="write a number ('0.3') or a percentage ('10%')"
        )
    if value < 0:
        raise EdgepipeError(
            f"tolerance for {metric} is negative ({amount})",
            fix="write how far the metric may move the wrong way, as a positive number",
        )
    return value, relative


def _value(row: dict[str, Any], metric: str) -> float | None:
    """The figure compared for ``metric``; top-1 of non-reference rows is taken vs PyTorch."""
    value = row.get("delta" if metric == "top1" and row.get("role") != "reference" else metric)
    return None if value is None else float(value)


def row_state(row: dict[str, Any]) -> str:
    """ "ok", "skipped" or "error", whatever words the row's status adds."""
    status = str(row.get("status"))
    return "ok" if status in OK_STATUSES else "skipped" if status.startswith("skipped") else "error"


def check(
    report: dict[str, Any], baseline: dict[str, Any], tolerances: dict[str, tuple[float, bool]]
) -> dict[str, Any]:
    """Every regression of ``report`` against ``baseline``; ``skipped``: rows the baseline measured that
    the report skipped (a sweep target no worker served)."""
    _check_comparable(report, baseline, tolerances)
    now_rows, base_rows = ({row["artifact"]: row for row in r["rows"]} for r in (report, baseline))
    regressions, skipped, compared = [], [], 0

    def regressed(artifact: str, metric: str, was: Any, now: Any, tolerance: Any = None) -> None:
        regressions.append(dict(artifact=artifact, metric=metric, baseline=was, now=now, tolerance=tolerance))

    for artifact, base in base_rows.items():
        row = now_rows.get(artifact)
        if row_state(base) != "ok":
            continue
        if row is not None and row_state(row) == "skipped":
            skipped.append({"artifact": artifact, "status": row["status"]})
            continue
        if row is None or row_state(row) != "ok":
            now = "missing from the report" if row is None else f"status {row.get('status')}"
            regressed(artifact, "status", "ok", now)
            continue
        for metric, (amount, relative) in tolerances.items():
            base_value = _value(base, metric)
            if base_value is None:
                continue  # the baseline never measured it for this artifact (e.g. latency of a skipped engine)
            now_value = _value(row, metric)
            if now_value is None:
                raise EdgepipeError(
                    f"the report has no {metric} for {artifact}, which the tolerances name",
                    fix=f"drop {metric} from the tolerance file or produce a report that measures it",
                )
            compared += 1
            allowed = abs(base_value) * amount / 100.0 if relative else amount
            worse = (base_value - now_value) if METRICS[metric] else (now_value - base_value)
            if worse > allowed + 1e-9:
                name = "top1 vs PyTorch" if metric == "top1" and base.get("role") != "reference" else metric
                tolerance = f"{amount:g}%" if relative else amount
                regressed(artifact, name, round(base_value, 4), round(now_value, 4), tolerance)
    flagged = {r["artifact"] for r in regressions}
    for artifact, row in now_rows.items():  # a failed sweep cell fails the gate, whatever the baseline held
        if row.get("kind") == "cell" and row_state(row) == "error" and artifact not in flagged:
            regressed(artifact, "status", base_rows.get(artifact, {}).get("status"), row["status"])
    return {"passed": not regressions, "compared": compared, "regressions": regressions, "skipped": skipped}


def update_baseline(report_path: str | Path, baseline_path: str | Path) -> dict[str, Any]:
    report = load_report(report_path)
    write_json_atomic(baseline_path, report)
    return {"baseline": str(baseline_path), "rows": len(report["rows"]), "updated": True}
