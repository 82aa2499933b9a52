"""The accuracy-regression gate on report files shaped like those `edgepipe run` writes."""

import copy
import json

import pytest
from conftest import invoke

from pipeline import check
from pipeline.errors import EdgepipeError


def _report(ref_top1=98.9, int8_top1=98.6, latency=2.0):
    return {
        "format": check.REPORT_FORMAT,
        "model": "se_resnet",
        "data": "digits",
        "reference": {"top1": ref_top1, "samples": 359},
        "rows": [
            {
                "artifact": "pytorch",
                "role": "reference",
                "status": "ok",
                "top1": ref_top1,
                "delta": 0.0,
                "agreement": 100.0,
                "latency_ms": latency,
            },
            {
                "artifact": "onnx-int8",
                "role": "artifact",
                "status": "ok",
                "top1": int8_top1,
                "delta": round(int8_top1 - ref_top1, 4),
                "agreement": 99.4,
                "latency_ms": 1.0,
            },
            {
                "artifact": "engine-int8",
                "role": "artifact",
                "status": "skipped: no NVIDIA GPU",
                "top1": None,
                "delta": None,
                "agreement": None,
                "latency_ms": None,
            },
        ],
    }


def _write(tmp_path, name, obj):
    path = tmp_path / name
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return path


def test_same_report_passes():
    result = check.check(_report(), _report(), check.load_tolerances(None))
    assert result["passed"] and result["compared"] == 6  # top1, agreement, latency for two rows


def test_accuracy_is_judged_against_the_fresh_pytorch_run():
    # Retraining moved PyTorch and INT8 down together: INT8 is no worse relative to PyTorch.
    result = check.check(_report(ref_top1=98.7, int8_top1=98.4), _report(), {"top1": (0.3, False)})
    assert result["passed"]
    # INT8 fell 0.6 points further behind PyTorch than in the baseline.
    result = check.check(_report(int8_top1=98.0), _report(), {"top1": (0.3, False)})
    assert not result["passed"]
    [regression] = result["regressions"]
    assert regression["artifact"] == "onnx-int8" and regression["metric"] == "top1 vs PyTorch"
    assert regression["baseline"] == pytest.approx(-0.3) and regression["now"] == pytest.approx(-0.9)


def test_relative_tolerance_and_every_regression_listed():
    result = check.check(
        _report(ref_top1=98.0, int8_top1=97.0, latency=2.5),
        _report(),
        {"top1": (0.3, False), "latency_ms": (10.0, True)},
    )
    metrics = {(r["artifact"], r["metric"]) for r in result["regressions"]}
    assert metrics == {("pytorch", "top1"), ("pytorch", "latency_ms"), ("onnx-int8", "top1 vs PyTorch")}


def test_failed_artifact_is_a_regression():
    now = _report()
    now["rows"][1]["status"] = "error: quantization failed"
    result = check.check(now, _report(), check.load_tolerances(None))
    assert result["regressions"][0]["metric"] == "status"


def test_cli_exit_codes_and_update_baseline(runner, tmp_path):
    base = _write(tmp_path, "baseline.json", _report())
    good = _write(tmp_path, "good.json", _report())
    bad = _write(tmp_path, "bad.json", _report(int8_top1=97.0))
    assert invoke(runner, "check", good, "--baseline", base).exit_code == 0
    result = invoke(runner, "check", bad, "--baseline", base, "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["regressions"][0]["artifact"] == "onnx-int8"
    human = invoke(runner, "check", bad, "--baseline", base)
    assert "onnx-int8: top1 vs PyTorch baseline -0.3 now -1.9" in human.stdout
    assert invoke(runner, "check", bad, "--baseline", tmp_path / "new.json", "--update-baseline").exit_code == 0
    assert invoke(runner, "check", bad, "--baseline", tmp_path / "new.json").exit_code == 0


@pytest.mark.parametrize(
    "case, message",
    [
        ("other_model", "baseline is for model 'bot_net'"),
        ("missing_metric", "has no agreement for onnx-int8"),
        ("malformed_yaml", "not valid YAML or JSON (line"),
        ("unknown_metric", "unknown metric 'accuracy'"),
        ("not_a_number", "tolerance for top1 is 'lots'"),
        ("old_format", "report format 0"),
        ("not_json", "not valid JSON"),
    ],
)
def test_bad_input_is_one_clear_line(runner, tmp_path, case, message):
    baseline, report, tolerances = _report(), _report(), "top1: 0.3\nagreement: 0.5\n"
    if case == "other_model":
        baseline["model"] = "bot_net"
    elif case == "missing_metric":
        del report["rows"][1]["agreement"]
    elif case == "malformed_yaml":
        tolerances = "top1: [0.3\nagreement: 0.5\n"
    elif case == "unknown_metric":
        tolerances = "accuracy: 1\n"
    elif case == "not_a_number":
        tolerances = "top1: lots\n"
    elif case == "old_format":
        report["format"] = 0
    paths = [
        _write(tmp_path, "report.json", "{not json" if case == "not_json" else report),
        _write(tmp_path, "baseline.json", baseline),
        _write(tmp_path, "tol.yaml", tolerances),
    ]
    result = invoke(runner, "check", paths[0], "--baseline", paths[1], "--tolerances", paths[2])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.stderr
    assert "Fix:" in lines[0]


def test_tolerance_parsing():
    parsed = check.load_tolerances(None)
    assert parsed["top1"] == (0.3, False) and parsed["latency_ms"] == (10.0, True)
    with pytest.raises(EdgepipeError, match="negative"):
        check._parse_tolerance("top1", -1, "t.yaml")
    assert copy.deepcopy(parsed) == parsed


def _sweep_report(cells):
    """A report shaped like sweep.json: the run rows of one model, then one row per engine cell."""
    report = _report()
    report["kind"] = "sweep"
    for row in report["rows"]:
        row.update(kind="run", artifact=f"se_resnet/{row['artifact']}")
    report["rows"] += [
        {
            "kind": "cell",
            "artifact": f"se_resnet/engine-int8-{target}",
            "role": "artifact",
            "status": status,
            "top1": None,
            "delta": None,
            "agreement": None,
            "latency_ms": None,
        }
        for target, status in cells.items()
    ]
    return report


def test_sweep_cells_built_or_reused_are_ok_skipped_is_listed_failed_fails(runner, tmp_path):
    baseline = _sweep_report({"sm_89": "built", "sm_87": "built", "sm_86": "built"})
    now = _sweep_report({"sm_89": "reused", "sm_87": "skipped: no worker advertises sm_87", "sm_86": "built"})
    result = check.check(now, baseline, check.load_tolerances(None))
    assert result["passed"] and result["compared"] == 6
    assert result["skipped"] == [
        {"artifact": "se_resnet/engine-int8-sm_87", "status": "skipped: no worker advertises sm_87"}
    ]

    failed = _sweep_report({"sm_89": "reused", "sm_87": "built", "sm_86": "failed: TensorRT-RTX cannot build it"})
    result = check.check(failed, baseline, check.load_tolerances(None))
    assert not result["passed"]
    assert result["regressions"] == [
        {
            "artifact": "se_resnet/engine-int8-sm_86",
            "metric": "status",
            "baseline": "ok",
            "now": "status failed: TensorRT-RTX cannot build it",
            "tolerance": None,
        }
    ]
    # A cell the baseline never built fails the gate too.
    new_failure = _sweep_report({"sm_89": "built", "sm_87": "built", "sm_86": "built", "sm_120": "failed: build error"})
    assert [r["artifact"] for r in check.check(new_failure, baseline, check.load_tolerances(None))["regressions"]] == [
        "se_resnet/engine-int8-sm_120"
    ]

    report, base = _write(tmp_path, "sweep.json", now), _write(tmp_path, "base.json", baseline)
    result = invoke(runner, "check", report, "--baseline", base)
    assert (
        result.exit_code == 0
        and "se_resnet/engine-int8-sm_87: not compared, skipped: no worker advertises sm_87" in result.stdout
    )
    assert invoke(runner, "check", _write(tmp_path, "failed.json", failed), "--baseline", base).exit_code == 1


def _on_jetson(report, mode, clocks):
    report["bench"] = {
        "jetson": {"jetson": True, "module": "NVIDIA Jetson AGX Orin", "nvpmodel": mode, "jetson_clocks": clocks}
    }
    return report


def test_latency_across_power_modes_or_clock_states_is_refused_naming_both_accuracy_still_compares():
    tolerances = check.load_tolerances(None)
    with pytest.raises(EdgepipeError) as error:
        check.check(_on_jetson(_report(), 2, True), _on_jetson(_report(), 0, True), tolerances)
    message = str(error.value)
    assert "nvpmodel mode 0 with jetson_clocks on" in message and "nvpmodel mode 2 with jetson_clocks on" in message
    with pytest.raises(EdgepipeError, match="jetson_clocks off"):
        check.check(_on_jetson(_report(), 0, False), _on_jetson(_report(), 0, True), tolerances)
    accuracy = {metric: tolerances[metric] for metric in ("top1", "agreement")}
    assert check.check(_on_jetson(_report(), 2, True), _on_jetson(_report(), 0, True), accuracy)["passed"]
    same = check.check(_on_jetson(_report(), 0, True), _on_jetson(_report(), 0, True), tolerances)
    assert same["passed"] and same["compared"] == 6
    assert check.check(_report(), _on_jetson(_report(), 0, True), tolerances)["passed"]  # one state unknown: compared
