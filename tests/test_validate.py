"""edgepipe validate: every artifact against PyTorch on the held-out split, failing rows recorded."""

import json

from conftest import invoke

from pipeline import validate


def test_validate_rows_and_error_row(trained, exported, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x00garbage")
    result = validate.validate(trained[0], [exported, broken])
    assert result["reference"]["samples"] == trained[1]["split"]["counts"]["held_out"]
    ok, bad = result["rows"]
    assert ok["status"] == "ok" and ok["precision"] == "fp32"
    assert ok["agreement"] == 100.0 and abs(ok["delta"]) < 1e-9 and ok["max_abs_diff"] < 1e-4 and ok["cosine"] > 0.9999
    assert bad["status"] == "error" and "broken.onnx" in bad["error"] and "Fix:" in bad["error"]
    assert result["ok"] is False


def test_validate_cli_json_and_table(runner, trained, exported, tmp_path):
    result = invoke(runner, "validate", "--checkpoint", trained[0], exported, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    row = report["rows"][0]
    for key in (
        "artifact",
        "precision",
        "top1",
        "delta",
        "agreement",
        "max_abs_diff",
        "mean_abs_diff",
        "cosine",
        "status",
    ):
        assert key in row
    missing = tmp_path / "missing.onnx"
    table = invoke(runner, "validate", "--checkpoint", trained[0], exported, missing)
    assert table.exit_code == 1
    assert "fp32" in table.stdout and "100.00" in table.stdout and "missing.onnx: error:" in table.stdout
