"""The bench report: bench.md (trtexec-style table) and bench.png (latency against accuracy)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.artifacts import atomic_output, check_output, write_text_atomic
from pipeline.tables import cell


def write_report(
    result: dict[str, Any], folder: str | Path, accuracy: dict[str, float], labels: dict[str, str] | None = None
) -> tuple[Path, Path]:
    """Write bench.md (the table) and bench.png (latency against accuracy, one point per artifact) to ``folder``;
    ``accuracy``: held-out top-1 by artifact path or file name (empty when nothing was validated); ``labels``:
    the points' names (a run's artifact ids: pytorch, onnx-fp16, engine-int8), else the file name."""
    folder = Path(folder)
    md_path, png_path = folder / "bench.md", folder / "bench.png"
    check_output(md_path, force=True)
    with atomic_output(png_path) as tmp:
        figure(result, accuracy, labels or {}).savefig(tmp, format="png", bbox_inches="tight")
    write_text_atomic(md_path, to_markdown(result, accuracy, png_path.name))
    return md_path, png_path


# The figures of a bench.md row, in its columns' order: (key of the row, format).
FIGURES = (("median_ms", ".3f"), ("mean_ms", ".3f"), ("p90_ms", ".3f"), ("p99_ms", ".3f"), ("throughput", ".1f"))
FIGURES += (("h2d_ms", ".3f"), ("compute_ms", ".3f"), ("d2h_ms", ".3f"), ("device_memory_mb", ".2f"))


def to_markdown(result: dict[str, Any], accuracy: dict[str, float] | None = None, plot: str | None = None) -> str:
    settings = result["settings"]
    timed = f"{settings['iterations']} iterations" if settings["iterations"] else f"{settings['duration_s']} s"
    lines = [
        "# edgepipe bench",
        "",
        f"Device: {result['device']}. Batches {', '.join(map(str, settings['batches']))}; warm-up {settings['warmup_ms']} ms, then {timed} per row.",
        "",
        "| artifact | runtime | precision | batch | status | median (ms) | mean (ms) | p90 (ms) | p99 (ms) | throughput (img/s) | H2D (ms) | compute (ms) | D2H (ms) | device memory (MB) | top-1 (%) |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('reason', '')}".replace("|", "/")
        figures = " | ".join(cell(r.get(key), spec) for key, spec in FIGURES)
        top1 = cell(_by_path_or_name(accuracy or {}, r["artifact"]), ".2f")
        lines.append(
            f"| {Path(r['artifact']).name} | {r.get('runtime') or ''} | {r.get('precision') or ''} | {r['batch']} | {status} | {figures} | {top1} |"
        )
    lines += ["", *footer_lines(result)]
    if plot:
        lines += ["", f"![latency against top-1]({plot})"]
    return "\n".join(lines) + "\n"


def footer_lines(result: dict[str, Any]) -> list[str]:
    lines = sorted({f"{Path(r['artifact']).name}: {r['note']}" for r in result["rows"] if r.get("note")})
    o = result.get("overhead")
    if o:
        lines.append(
            f"Harness overhead: {o['harness_ms']:.4f} ms per iteration vs {o['bare_ms']:.4f} ms in a bare loop "
            f"(ratio {o['ratio']:.3f}, {o['runtime']}, batch {o['batch']}, {o['iterations']} calls)."
        )
    return lines + jetson_lines(result.get("jetson")) + row_lines(result["rows"])


def jetson_lines(record: dict[str, Any] | None) -> list[str]:
    """The Jetson's state around the bench: module, L4T, power mode, clocks, fan, temperatures, throttling."""
    if not record:
        return []
    if not record.get("jetson"):
        return [f"Device state: {record.get('note', 'not a Jetson')}."]
    clocks = "on" if record["jetson_clocks"] else "off"
    cpu = max((khz for khz in record.get("cpu_khz") or [] if khz), default=None)
    end = record.get("end") or {}
    temps = ", ".join(
        f"{zone} {start:.1f} -> {cell((end.get('temperatures_c') or {}).get(zone), '.1f')}"
        for zone, start in (record.get("temperatures_c") or {}).items()
    )
    hot = sorted(set(record.get("hot_zones") or []) | set(end.get("hot_zones") or []))
    throttled = f"yes ({', '.join(hot) or 'GPU clock below its pinned maximum'})" if record.get("throttled") else "no"
    return [
        f"Jetson: {record['module']}, L4T {record['l4t']} (JetPack {record.get('jetpack') or '?'}), "
        f"nvpmodel mode {record['nvpmodel']}, jetson_clocks {clocks}; GPU {_mhz(record.get('gpu_hz'))} MHz "
        f"(max {_mhz(record.get('gpu_max_hz'))}), EMC {_mhz(record.get('emc_hz'))} MHz"
        f"{' (readable as root)' if record.get('emc_hz') is None else ''}, "
        f"CPU {_mhz(cpu and cpu * 1000)} MHz; fan {cell(record.get('fan_pwm'), 'd') or '?'}/255.",
        f"Temperatures (C, start -> end): {temps or 'none'}; throttled: {throttled}; "
        f"rail power from {record.get('power_source') or 'nowhere (no INA3221 in sysfs, no tegrastats)'}.",
    ]


def row_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Per row: each rail's mean power and mJ per inference; the sustained medians and their drift."""
    lines = []
    for r in rows:
        name = f"{Path(r['artifact']).name} batch {r['batch']}"
        if r.get("power"):
            rails = ", ".join(
                f"{rail} {v['mean_mw']:.0f} mW = {cell(v.get('mj_per_inference'), '.3f')} mJ"
                for rail, v in r["power"].items()
            )
            lines.append(f"Power, {name} (per inference of {r['batch']} image(s)): {rails}.")
        s = r.get("sustained")
        if s:
            medians = ", ".join(f"{v:.3f}" for v in s["p50_ms"])
            drift = "n/a" if s["drift_pct"] is None else f"{s['drift_pct']:+.2f}%"
            lines.append(
                f"Sustained, {name}: median per {s['window_s']:g} s window {medians} ms; drift {drift} (first window to last)."
            )
    return lines


# Colour says the precision, the marker the format; each artifact is one legend entry.
COLOURS = {"fp32": "tab:blue", "fp16": "tab:orange", "int8": "tab:green"}
MARKERS = {"pytorch": "o", "onnx": "s", "engine": "^"}
SPARE_MARKERS = ("D", "v", "P", "X", "*", "h", "<", ">")
POINT_STYLE = {"edgecolors": "black", "linewidths": 0.5, "clip_on": False}
LEGEND_STYLE = {"borderaxespad": 0.0, "fontsize": 8, "title": "artifact", "title_fontsize": 8}


def plot_points(result: dict[str, Any], accuracy: dict[str, float], labels: dict[str, str]) -> list[dict[str, Any]]:
    """One point per artifact with both a latency (median, smallest batch measured) and a top-1."""
    points = []
    for artifact in dict.fromkeys(r["artifact"] for r in result["rows"]):
        ok = [r for r in result["rows"] if r["artifact"] == artifact and r["status"] == "ok"]
        top1 = _by_path_or_name(accuracy, artifact)
        if not ok or top1 is None:
            continue
        first = min(ok, key=lambda r: r["batch"])
        label = _by_path_or_name(labels, artifact) or Path(str(artifact)).name
        point = {"label": label, "latency_ms": first["median_ms"], "batch": first["batch"], "top1": float(top1)}
        points.append({**point, "precision": first.get("precision"), "format": first.get("format")})
    return points


def accuracy_limits(values: list[float]) -> tuple[float, float]:
    """The top-1 axis: a margin around the points, never below 0% or above 100%."""
    if not values:
        return 0.0, 100.0
    low, high = min(values), max(values)
    pad = max(0.5, 0.15 * (high - low))
    return max(0.0, low - pad), min(100.0, high + pad)


def figure(result: dict[str, Any], accuracy: dict[str, float], labels: dict[str, str]):
    """The latency/accuracy figure: labelled by a legend beside the axes, so labels never overlap."""
    # a second to import: only bench reports draw. A Figure of its own, not pyplot's: no GUI backend, nothing to close.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4), dpi=120)
    ax = fig.subplots()
    points = plot_points(result, accuracy, labels)
    used: set[tuple[str, str]] = set()
    spare = iter(SPARE_MARKERS)
    for i, p in enumerate(points):
        colour = COLOURS.get(str(p["precision"]), "tab:gray")
        marker = MARKERS.get(str(p["format"]), "o")
        if (colour, marker) in used:  # two artifacts of one format and precision: tell them apart
            marker = next(spare, "o")
        used.add((colour, marker))
        # Each point a little smaller than the one before: artifacts with the same figures show as rings.
        size, label = max(24, 110 - 14 * i), f"{p['label']} (batch {p['batch']})"
        ax.scatter(
            p["latency_ms"], p["top1"], color=colour, marker=marker, s=size, zorder=3 + i, label=label, **POINT_STYLE
        )
    if points:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), **LEGEND_STYLE)
    else:
        ax.text(
            0.5, 0.5, "no artifact with both latency and accuracy", ha="center", va="center", transform=ax.transAxes
        )
    ax.set_ylim(*accuracy_limits([p["top1"] for p in points]))
    latencies = [p["latency_ms"] for p in points if p["latency_ms"]]
    if latencies and max(latencies) / min(latencies) > 30:  # PyTorch and an engine can be 100x apart
        ax.set_xscale("log")
    else:
        ax.set_xlim(left=0.0)
    ax.set_xlabel("median latency (ms, smallest batch" + (", log scale)" if ax.get_xscale() == "log" else ")"))
    ax.set_ylabel("held-out top-1 (%)")
    ax.set_title(f"Latency vs accuracy: {result['device'].split(';')[0]}", fontsize=9)
    ax.grid(True, alpha=0.3)
    return fig


def _by_path_or_name(mapping: dict[str, Any], artifact: str) -> Any:
    value = mapping.get(str(artifact))
    return value if value is not None else mapping.get(Path(str(artifact)).name)


def _mhz(hertz) -> str:
    return "?" if hertz is None else f"{hertz / 1e6:.0f}"
