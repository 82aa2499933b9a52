"""edgepipe bench on real runs: statistics, the overhead check, reports, and rows that fail or skip."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import invoke

from pipeline import bench, benchreport, cuda
from pipeline.commands.bench import held_out_top1
from pipeline.errors import EdgepipeError
from pipeline.runtime.ort import OnnxRuntimeRunner

NO_GPU = cuda.current_compute_capability() is None
ITERATIONS = 20


@pytest.fixture(scope="module")
def result(trained, exported):
    return bench.bench(
        [str(exported)], checkpoint=trained[0], batches=(1, 8), warmup_ms=50, iterations=ITERATIONS, progress=False
    )


def ok_rows(result):
    return [r for r in result["rows"] if r["status"] == "ok"]


def test_reference_and_artifact_are_measured_side_by_side(result, exported):
    rows = result["rows"]
    assert [(r["runtime"], r["batch"]) for r in rows] == [
        ("pytorch-cpu", 1),
        ("pytorch-cpu", 8),
        ("onnxruntime-cpu", 1),
        ("onnxruntime-cpu", 8),
    ]
    assert all(r["status"] == "ok" and r["precision"] == "fp32" for r in rows)
    assert rows[2]["artifact"] == str(exported)
    assert result["failed"] == 0 and "CPU" in result["device"]
    assert set(bench.ROW_KEYS) <= set(rows[0])


def test_percentiles_are_ordered(result):
    for r in ok_rows(result):
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"] <= r["p95_ms"] <= r["p99_ms"]
        assert r["min_ms"] <= r["mean_ms"]


def test_throughput_follows_mean_latency_and_batch(result):
    for r in ok_rows(result):
        # throughput is reported to 0.01 images/s: on a slow, loaded machine that rounding exceeds 1e-3 of it
        assert r["throughput"] == pytest.approx(r["batch"] * 1000.0 / r["mean_ms"], rel=1e-3, abs=0.005)


def test_iterations_are_honoured_and_warm_up_is_not_counted(result):
    for r in ok_rows(result):
        assert r["iterations"] == ITERATIONS
        assert r["warmup_iterations"] >= 1


def test_duration_mode_runs_for_the_duration(exported):
    runner = OnnxRuntimeRunner(exported)
    x = np.zeros((1, 1, 32, 32), dtype=np.float32)
    stats = bench.measure(runner, x, warmup_ms=0, duration_s=0.2)
    assert stats["warmup_iterations"] == 0
    assert stats["timed_s"] >= 0.2 and stats["iterations"] >= 1


def test_overhead_against_a_bare_loop_is_reported(result):
    overhead = result["overhead"]
    assert overhead["harness_ms"] > 0 and overhead["bare_ms"] > 0 and overhead["ratio"] > 0
    # Both loops time the same calls; on a busy shared CPU the ratio is noisy, but not wild.
    assert 0.5 < overhead["ratio"] < 2.0
    assert overhead["iterations"] >= 10


def test_fixed_batch_artifact_is_measured_only_at_its_batch(trained, tmp_path):
    from pipeline import export

    path = tmp_path / "b4.onnx"
    export.export(trained[0], path, batch=4)
    result = bench.bench([str(path)], batches=(1, 8), warmup_ms=0, iterations=3, progress=False)
    [row] = result["rows"]
    assert row["batch"] == 4 and row["status"] == "ok"
    assert "measured only at batch 4" in row["note"]


@pytest.mark.skipif(not NO_GPU, reason="this machine has an NVIDIA GPU (tests/test_gpu.py benches engines)")
def test_engine_rows_are_skipped_on_a_machine_without_gpu(engine, exported):
    result = bench.bench([str(engine), str(exported)], batches=(1, 8), warmup_ms=0, iterations=3, progress=False)
    engine_rows = [r for r in result["rows"] if r["artifact"] == str(engine)]
    assert [r["status"] for r in engine_rows] == [bench.SKIPPED_NO_GPU] * 2
    assert "needs an NVIDIA GPU" in engine_rows[0]["reason"]
    assert engine_rows[0]["format"] == "engine" and engine_rows[0]["precision"] == "fp32"
    assert result["failed"] == 0 and len(ok_rows(result)) == 2


def test_a_failing_artifact_is_a_row_not_fatal(exported, tmp_path):
    result = bench.bench([str(tmp_path / "missing.onnx"), str(exported)], warmup_ms=0, iterations=3, progress=False)
    error, ok = result["rows"]
    assert error["status"] == "error" and "does not exist" in error["reason"]
    assert ok["status"] == "ok"
    assert result["failed"] == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batches": (0,)}, "--batch must be 1 or more"),
        ({"iterations": 0}, "--iterations must be 1 or more"),
        ({"warmup_ms": -1}, "--warmup-ms must be 0 or more"),
        ({"duration_s": 0}, "--duration-s must be more than 0"),
        ({"device": "tpu"}, "--device must be cpu or cuda"),
    ],
)
def test_bad_settings_are_clear_errors(exported, kwargs, message):
    with pytest.raises(EdgepipeError, match=message):
        bench.bench([str(exported)], **kwargs)


def test_nothing_to_measure_is_a_clear_error():
    with pytest.raises(EdgepipeError, match="nothing to measure"):
        bench.bench([])


def test_report_has_the_table_and_a_png_plot(result, tmp_path):
    md, png = benchreport.write_report(result, tmp_path / "report", accuracy=held_out_top1(result))
    text = md.read_text()
    assert "| artifact | runtime | precision | batch | status | median (ms)" in text
    assert "| model.onnx | onnxruntime-cpu | fp32 | 8 | ok |" in text
    assert "Harness overhead:" in text and "![latency against top-1](bench.png)" in text
    # top-1 of the held-out split is in the last column for both the reference and the ONNX model
    last = [line.rsplit("|", 2)[-2].strip() for line in text.splitlines() if line.startswith("| ") and "| ok |" in line]
    assert all(float(v) > 90 for v in last)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_prints_one_json_object_and_writes_files(runner, trained, exported, tmp_path):
    out_json = tmp_path / "bench.json"
    result = invoke(
        runner,
        "bench",
        exported,
        "--checkpoint",
        trained[0],
        "--batch",
        "1,2",
        "--iterations",
        5,
        "--warmup-ms",
        10,
        "--json",
        "--json-out",
        out_json,
        "--report",
        tmp_path / "rep",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {"device", "rows", "overhead"} <= set(data)
    assert [r["batch"] for r in data["rows"]] == [1, 2, 1, 2]
    assert json.loads(out_json.read_text())["rows"] == data["rows"]
    assert (tmp_path / "rep" / "bench.md").is_file() and (tmp_path / "rep" / "bench.png").is_file()


def test_cli_table_and_exit_code_1_when_a_row_failed(runner, exported, tmp_path):
    result = invoke(runner, "bench", exported, tmp_path / "missing.onnx", "--iterations", 3, "--warmup-ms", 0)
    assert result.exit_code == 1
    assert "onnxruntime-cpu" in result.stdout and "missing.onnx: error" in result.stdout
    assert "Harness overhead" in result.stdout


def test_cli_refuses_to_overwrite_json_out_without_force(runner, exported, tmp_path):
    out_json = tmp_path / "bench.json"
    out_json.write_text("{}")
    result = invoke(runner, "bench", exported, "--iterations", 2, "--json-out", out_json)
    assert result.exit_code == 1 and "already exists" in result.stderr
    assert out_json.read_text() == "{}"


def test_cli_help_has_an_example(runner):
    result = invoke(runner, "bench", "--help")
    assert result.exit_code == 0 and "Example:" in result.output and "--cuda-graph" in result.output
