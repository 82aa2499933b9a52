"""bench's Jetson record, its power per inference and --sustain, on ONNX Runtime with Jetson sysfs trees as fixtures.

tests/fixtures/jetson holds the files a Jetson AGX Orin, Orin Nano and AGX Thor expose (sysfs, nvpmodel,
L4T release, one tegrastats line each), and a Jetson AGX Xavier's (JetPack 5), whose rails (GPU, CPU,
SOC) edgepipe does not know. ``--sysfs-root`` / ``EDGEPIPE_SYSFS_ROOT`` points bench at a tree.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat

import numpy as np
import pytest
from conftest import invoke, one_line_error

from pipeline import bench, timing
from pipeline.errors import EdgepipeError
from tests.deploy_models import classifier
from tests.test_deploy_jetson import EXPECTED_RAILS, FIXTURES


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(classifier(tmp_path_factory.mktemp("bench-jetson")))


def _bench(model, root, **settings):
    return bench.bench([model], warmup_ms=0, progress=False, sysfs_root=str(root), **settings)


@pytest.mark.parametrize("board", sorted(EXPECTED_RAILS))
def test_bench_records_the_boards_state_and_each_rails_energy_per_inference(model, board):
    result = _bench(model, FIXTURES / board, duration_s=0.3)
    record, (row,) = result["jetson"], result["rows"]
    assert record["jetson"] and record["power_source"] == "ina3221" and record["root"] == str(FIXTURES / board)
    assert record["module"].startswith("NVIDIA Jetson") and record["nvpmodel"] in (0, 1)
    assert record["jetpack"] == {"orin_agx": "6.2", "orin_nano": "6.2", "thor": "7.0"}[board]
    assert set(record["end"]) >= {"temperatures_c", "throttling"} and record["throttled"] == (board == "thor")
    assert set(row["power"]) == set(EXPECTED_RAILS[board])
    for rail, milliwatts in EXPECTED_RAILS[board].items():
        figures = row["power"][rail]
        assert figures["mean_mw"] == pytest.approx(milliwatts / 1000, rel=1e-5)
        # the rail's constant power over the timed window, shared by the window's inferences
        window_mj = figures["mean_mw"] * row["timed_s"]
        assert figures["mj_per_inference"] * row["iterations"] == pytest.approx(window_mj, rel=1e-3)


def test_off_a_jetson_the_record_says_so_and_rows_have_no_power(model, tmp_path, runner):
    result = _bench(model, tmp_path, iterations=5)
    assert result["jetson"]["jetson"] is False and set(result["jetson"]) == {"jetson", "note"}
    assert "not a Jetson" in result["jetson"]["note"] and result["rows"][0]["power"] is None
    human = invoke(runner, "bench", model, "--iterations", 5, "--warmup-ms", 0, "--sysfs-root", tmp_path)
    assert human.exit_code == 0 and "Device state: not a Jetson" in human.stdout


def test_cli_reads_the_tree_of_edgepipe_sysfs_root_in_human_output_and_json(model, runner):
    env = {"EDGEPIPE_SYSFS_ROOT": str(FIXTURES / "orin_agx")}
    human = runner.invoke(_main(), ["bench", model, "--iterations", "20"], env=env, catch_exceptions=False)
    text = " ".join(human.stdout.split())
    assert human.exit_code == 0, human.output
    assert "L4T R36.4.3 (JetPack 6.2), nvpmodel mode 0, jetson_clocks on; GPU 1300 MHz" in text
    assert "EMC 3199 MHz" in text and "tj-thermal 53.0 -> 53.0" in text and "throttled: no" in text
    assert "Power, model.onnx batch 1" in text and "VDD_GPU_SOC 5084 mW" in text
    data = json.loads(runner.invoke(_main(), ["bench", model, "--iterations", "20", "--json"], env=env).stdout)
    assert data["jetson"]["emc_hz"] == 3199000000 and data["rows"][0]["power"]["VDD_CPU_CV"]["mj_per_inference"] > 0


def test_thor_throttling_is_said(model, runner):
    result = invoke(runner, "bench", model, "--iterations", 5, "--sysfs-root", FIXTURES / "thor")
    assert "throttled: yes (tj-thermal)" in " ".join(result.stdout.split())


def test_unknown_rail_names_are_one_line_and_nothing_is_written(model, runner, tmp_path):
    out = tmp_path / "bench.json"
    result = invoke(runner, "bench", model, "--sysfs-root", FIXTURES / "xavier_agx", "--json-out", out)
    one_line_error(result, "unknown power rails GPU, CPU, SOC", "RAILS in pipeline/deploy/power.py")
    assert not out.exists()


def _without_ina3221(board, tmp_path, monkeypatch):
    """A copy of ``board``'s tree with no INA3221 in sysfs, and a tegrastats on PATH printing the board's line."""
    tree = tmp_path / board
    shutil.copytree(FIXTURES / board, tree)
    shutil.rmtree(tree / "sys" / "bus")
    tegrastats = tmp_path / "bin" / "tegrastats"  # prints the board's own line, as tegrastats --interval does
    tegrastats.parent.mkdir()
    tegrastats.write_text(f"#!/bin/sh\nwhile true; do cat '{tree / 'tegrastats.txt'}'; sleep 0.02; done\n")
    tegrastats.chmod(tegrastats.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tegrastats.parent}{os.pathsep}{os.environ['PATH']}")
    return tree


@pytest.mark.parametrize(
    "board, rail, milliwatts",
    [("orin_agx", "VDD_GPU_SOC", 5083.0), ("orin_nano", "VDD_IN", 6674.0), ("thor", "VIN", 52710.0)],
)
def test_tegrastats_is_the_fallback_where_sysfs_has_no_ina3221(model, tmp_path, monkeypatch, board, rail, milliwatts):
    result = _bench(model, _without_ina3221(board, tmp_path, monkeypatch), duration_s=0.4)
    assert result["jetson"]["power_source"] == "tegrastats"
    (row,) = result["rows"]
    assert row["power"][rail]["mean_mw"] == milliwatts and set(EXPECTED_RAILS[board]) <= set(row["power"])
    energy = row["power"][rail]["mj_per_inference"] * row["iterations"]
    assert energy == pytest.approx(milliwatts * row["timed_s"], rel=1e-3)


def test_unknown_rails_in_tegrastats_fail_the_row_naming_them(model, tmp_path, monkeypatch):
    result = _bench(model, _without_ina3221("xavier_agx", tmp_path, monkeypatch), duration_s=0.3)
    (row,) = result["rows"]
    assert row["status"] == "error" and "unknown power rails CPU, CV, GPU, SOC, SYS5V, VDDRQ" in row["reason"]
    assert "Fix: add this module's rails to RAILS" in row["reason"] and result["failed"] == 1


def test_sustained_medians_per_window_and_drift_of_a_known_run():
    latencies = np.array([1.0] * 1000 + [2.0] * 500 + [3.0] * 334)  # 1 s at 1 ms, 1 s at 2 ms, 1.002 s at 3 ms
    windows = timing.sustained(latencies, window_s=1.0)
    assert windows["p50_ms"] == [1.0, 2.0, 3.0] and windows["drift_pct"] == 200.0
    assert windows["iterations"] == [1000, 500, 334] and windows["window_s"] == pytest.approx(3.002 / 3, abs=1e-3)


def test_sustain_on_onnx_runtime_reports_a_median_per_window(model):
    (row,) = _bench(model, "/nonexistent", sustain_s=2.0, sustain_window_s=0.5)["rows"]
    sustained = row["sustained"]
    assert len(sustained["p50_ms"]) == 4 and sum(sustained["iterations"]) == row["iterations"]
    assert sustained["window_s"] == pytest.approx(0.5, rel=0.1) and row["timed_s"] >= 2.0
    first, last = sustained["p50_ms"][0], sustained["p50_ms"][-1]
    assert sustained["drift_pct"] == pytest.approx(100 * (last - first) / first, abs=0.01)


def test_cli_sustain_in_human_output_and_json(model, runner):
    args = ["bench", model, "--sustain", "1s", "--sustain-window", "0.5s", "--warmup-ms", "0"]
    human = invoke(runner, *args)
    text = " ".join(human.stdout.split())
    assert human.exit_code == 0 and re.search(
        r"Sustained, model.onnx batch 1: median per 0\.\d+ s window [\d.]+, [\d.]+ ms; drift [+-]", text
    )
    data = json.loads(invoke(runner, *args, "--json").stdout)
    assert data["settings"]["sustain_s"] == 1.0 and data["settings"]["sustain_window_s"] == 0.5
    assert len(data["rows"][0]["sustained"]["p50_ms"]) == 2


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--sustain", "soon"], ["--sustain 'soon' is not a duration", "10m"]),
        (["--sustain", "1m"], ["shorter than two windows of 60s", "--sustain-window"]),
        (["--sustain", "10s", "--sustain-window", "2s", "--iterations", "5"], ["not --iterations"]),
    ],
)
def test_bad_sustain_is_one_line(model, runner, args, needles):
    one_line_error(invoke(runner, "bench", model, *args), *needles)


def test_check_refuses_latency_across_power_modes_naming_both_and_still_compares_accuracy(model, runner, tmp_path):
    reports = {}
    for board in ("orin_agx", "orin_nano"):
        reports[board] = tmp_path / f"{board}.json"
        made = invoke(
            runner, "bench", model, "--iterations", 20, "--sysfs-root", FIXTURES / board, "--json-out", reports[board]
        )
        assert made.exit_code == 0, made.output
    one_line_error(
        invoke(runner, "check", reports["orin_nano"], "--baseline", reports["orin_agx"]),
        "nvpmodel mode 0 with jetson_clocks on",
        "nvpmodel mode 1 with jetson_clocks off",
        "--tolerances with no latency_ms",
    )
    accuracy_only = tmp_path / "tolerances.yaml"
    accuracy_only.write_text("top1: 0.3\n")
    allowed = invoke(
        runner, "check", reports["orin_nano"], "--baseline", reports["orin_agx"], "--tolerances", accuracy_only
    )
    assert allowed.exit_code == 0, allowed.output
    tolerant = tmp_path / "latency.yaml"
    tolerant.write_text("latency_ms: 1000%\n")
    same = json.loads(
        invoke(
            runner, "check", reports["orin_agx"], "--baseline", reports["orin_agx"], "--tolerances", tolerant, "--json"
        ).stdout
    )
    assert same["passed"] and same["compared"] == 1  # one bench row: model.onnx batch 1


def test_bad_sustain_settings_in_the_python_api(model):
    with pytest.raises(EdgepipeError, match="shorter than two windows"):
        bench.BenchSettings(sustain_s=1.0, sustain_window_s=1.0)


def _main():
    from pipeline.cli import main

    return main
