from pathlib import Path
from typing import Any

import click
from rich import box
from rich.table import Table

from pipeline.commands import options
from pipeline.progress import out


@click.command("bench", cls=options.EdgepipeCommand)
@click.argument("artifacts", nargs=-1, type=click.Path(dir_okay=False))
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False),
    metavar="CKPT",
    help="PyTorch checkpoint: the reference measured beside the artifacts.",
)
@options.batches_option("--batch", default="1", help="Batch sizes to measure (a fixed-batch artifact only at its own).")
@click.option("--warmup-ms", default=200.0, help="Warm-up time before timing, per artifact and batch.")
@click.option("--duration-s", default=3.0, help="Timed duration per artifact and batch.")
@click.option("--iterations", type=int, help="Timed iterations per artifact and batch (instead of --duration-s).")
@click.option(
    "--sustain",
    "sustain_s",
    metavar="DURATION",
    callback=options.callback(options.parse_duration, "--sustain"),
    help="Run each artifact and batch this long (10m, 90s, 1h) instead of --duration-s; report the median "
    "per window and its drift, first window to last.",
)
@click.option(
    "--sustain-window",
    "sustain_window_s",
    default="1m",
    metavar="DURATION",
    callback=options.callback(options.parse_duration, "--sustain-window"),
    help="The window of --sustain's medians.",
)
@click.option(
    "--sysfs-root",
    envvar="EDGEPIPE_SYSFS_ROOT",
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="Where a Jetson's /sys, /proc, /etc and /var are read for its power mode, clocks, temperatures and rail "
    "power (a copied tree; env EDGEPIPE_SYSFS_ROOT). Default: /.",
)
@click.option(
    "--cuda-graph", is_flag=True, help="Replay TensorRT engines as CUDA graphs (like trtexec --useCudaGraph)."
)
@click.option(
    "--device",
    default="cpu",
    type=click.Choice(["cpu", "cuda"]),
    help="Where PyTorch and ONNX Runtime run; engines always run on the GPU.",
)
@options.input_size_option(
    help="Size for ONNX models whose input leaves height and width open: HxW, or CxHxW to also check the channels. "
    "Default: the size of the preprocessing stored in the model."
)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="Write bench.md and bench.png (latency against accuracy) to DIR.",
)
@click.option("--json-out", type=click.Path(dir_okay=False), metavar="FILE", help="Also write the JSON result to FILE.")
@options.model_options(
    help="The model of a --checkpoint that names your own code: --model again, or --trust-model-code."
)
@options.force_option()
@options.json_option
def bench_command(artifacts, checkpoint, report_dir, json_out, model, force, as_json, input_size, **measuring):
    """Measure latency and throughput of the PyTorch reference and every artifact, side by side.

    Per artifact and batch: min, mean, median, p90, p95, p99 latency and throughput after a
    timed warm-up; for TensorRT engines also H2D, GPU compute and D2H apart (trtexec's split)
    and device memory. A failing artifact is a row with its reason; the exit code is 1 if any
    row failed. Engines on a machine without an NVIDIA GPU are skipped with that reason.

    On a Jetson it also records the module, L4T/JetPack, nvpmodel mode, jetson_clocks and the
    GPU/EMC/CPU clocks, fan, temperatures at start and end, throttling, and each power rail's mean
    power over every timed window as mJ per inference (INA3221 in sysfs, else tegrastats).

    \b
    Example:
      edgepipe bench runs/se/model.onnx runs/se/model.fp16.engine \\
          --checkpoint runs/se/se_resnet.pt --batch 1,8,32 --duration-s 3 --report runs/se/bench
      edgepipe bench model.onnx --sustain 2s --sustain-window 1s   # median per window, drift (10m: per minute)
    """
    # benchmarking runs the models (numpy, onnx, ONNX Runtime, torch): imported when the command runs, so --help starts at once.
    from pipeline import bench, benchreport
    from pipeline.artifacts import check_output, write_json_atomic  # onnx

    outputs = [json_out] if json_out else []
    outputs += [f"{report_dir}/bench.md", f"{report_dir}/bench.png"] if report_dir else []
    for path in outputs:
        check_output(path, force)  # fail before measuring, not after
    for path in artifacts:  # channels named in --input-size are checked against every ONNX model
        options.onnx_input_hw(input_size, path)
    # ``model`` is the --model spec; what bench needs of it, the code it may import, is in ``code``.
    settings = bench.BenchSettings(input_size=input_size.hw if input_size else None, **measuring)
    result = bench.bench(list(artifacts), checkpoint=checkpoint, settings=settings)
    if report_dir:
        md, png = benchreport.write_report(result, report_dir, accuracy=held_out_top1(result))
        result["report"] = {"markdown": str(md), "plot": str(png)}
    if json_out:
        write_json_atomic(json_out, result)
    options.emit(result, as_json, _print_table, failed=bool(result["failed"]))


# The figures of the table: column -> (key of the row, format); the engine columns only when an engine ran.
FIGURES = {
    "median": ("median_ms", ".3f"),
    "mean": ("mean_ms", ".3f"),
    "p99": ("p99_ms", ".3f"),
    "img/s": ("throughput", ".0f"),
}
ENGINE_FIGURES = {
    "H2D": ("h2d_ms", ".3f"),
    "GPU": ("compute_ms", ".3f"),
    "D2H": ("d2h_ms", ".3f"),
    "MB": ("device_memory_mb", ".2f"),
}


def _print_table(result) -> None:
    """One row per artifact and batch; reasons for skipped or failed rows are listed below once."""
    rows = result["rows"]
    # Narrow enough for 80 columns; min, p90 and p95 are in --json and the --report table.
    figures = {**FIGURES, **(ENGINE_FIGURES if any(r.get("compute_ms") is not None for r in rows) else {})}
    table = Table(
        title=f"Latency (ms) on {result['device']}", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False
    )
    for column in ("artifact", "runtime", "prec", "batch", "status", *figures):
        table.add_column(column, justify="right" if column == "batch" or column in figures else "left", overflow="fold")
    reasons = {}
    for r in rows:
        name = Path(r["artifact"]).name
        if r["status"] != "ok":
            reasons.setdefault(f"{name}: {r['status']}", r.get("reason", ""))
        cells = [options.cell(r.get(key), spec) for key, spec in figures.values()]
        table.add_row(
            name, r.get("runtime") or "", r.get("precision") or "", str(r["batch"]), r["status"].split(":")[0], *cells
        )
    out.print(table)
    for what, reason in reasons.items():
        out.print(f"{what} ({reason})" if reason else what)
    # the bench report reads the figures (numpy): imported once there are figures to print.
    from pipeline import benchreport

    for line in benchreport.footer_lines(result):
        out.print(line)
    if result.get("report"):
        out.print(f"Report: {result['report']['markdown']}, plot {result['report']['plot']}")


def held_out_top1(result: dict[str, Any]) -> dict[str, float]:
    """Top-1 (%) on the held-out split per artifact path that ran, for the latency/accuracy plot.

    ``edgepipe validate`` measures it; that needs the PyTorch checkpoint among the bench rows.
    """
    # validation runs the models: imported when there is a report to draw.
    from pipeline.validate import validate

    ok = list(dict.fromkeys(r["artifact"] for r in result["rows"] if r["status"] == "ok"))
    reference = next((r["artifact"] for r in result["rows"] if r.get("format") == "pytorch"), None)
    if reference is None:
        return {}
    report = validate(reference, [a for a in ok if a != reference])
    by_name = {Path(str(r.get("artifact"))).name: r.get("top1") for r in report.get("rows", [])}
    scores = {a: by_name.get(Path(a).name) for a in ok} | {reference: (report.get("reference") or {}).get("top1")}
    return {a: float(v) for a, v in scores.items() if v is not None}
