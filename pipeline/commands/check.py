import click

from pipeline.commands.options import EdgepipeCommand, emit, json_option
from pipeline.progress import out


@click.command("check", cls=EdgepipeCommand)
@click.argument("report", type=click.Path(dir_okay=False))
@click.option(
    "--baseline", required=True, type=click.Path(dir_okay=False), help="Baseline report (JSON) to compare with."
)
@click.option(
    "--tolerances",
    type=click.Path(dir_okay=False),
    help="YAML: metric: amount (points) or 'N%'. Default: top1 0.3, agreement 0.5, latency_ms 10%.",
)
@click.option("--update-baseline", is_flag=True, help="Write REPORT as the new baseline instead of checking.")
@json_option
def check_command(report, baseline, tolerances, update_baseline, as_json):
    """Compare a run report (or a bench --json-out result) with a baseline; exit 1 listing every regression.

    Accuracy of each artifact is compared as its change vs the PyTorch run in the same report.
    Latency measured on a Jetson in another power mode or clock state than the baseline's is
    refused (one line naming both); accuracy still compares.

    \b
    Example (in CI):
      edgepipe run -o runs/ci
      edgepipe check runs/ci/report.json --baseline ci/baseline.json --tolerances ci/tolerances.yaml
    """
    # the gate reads artifacts' records (onnx, numpy): imported when the command runs, so --help starts at once.
    from pipeline import check

    if update_baseline:
        result = check.update_baseline(report, baseline)
        emit(result, as_json, lambda r: out.print(f"baseline {r['baseline']} updated ({r['rows']} rows)"))
        return
    result = check.check(
        check.load_report(report), check.load_report(baseline, "baseline"), check.load_tolerances(tolerances)
    )
    emit(result, as_json, _print, failed=not result["passed"])


def _print(result) -> None:
    for row in result.get("skipped", []):
        out.print(f"  {row['artifact']}: not compared, {row['status']}")
    if result["passed"]:
        out.print(f"OK: no regressions ({result['compared']} figures compared)")
        return
    out.print(f"FAILED: {len(result['regressions'])} regression(s)")
    for r in result["regressions"]:
        out.print(
            f"  {r['artifact']}: {r['metric']} baseline {r['baseline']} now {r['now']} (tolerance {r['tolerance']})"
        )
