"""The CLI through Click's CliRunner: --json output, one-line errors, exit codes."""

import json

import pytest

from conftest import invoke


def _one_error_line(result):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code != 0
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_every_command_has_help_with_an_example(runner):
    from pipeline.cli import main

    for name in main.commands:
        result = invoke(runner, name, "--help")
        assert result.exit_code == 0
        assert "Example" in result.stdout, name


def test_models_json_lists_every_model(runner):
    import models

    result = invoke(runner, "models", "--json")
    assert result.exit_code == 0
    rows = json.loads(result.stdout)["models"]
    assert [r["name"] for r in rows] == models.names()
    assert {"se", "eca", "cbam", "coord", "gate", "softmax-pool", "mhsa"} <= {r["attention"] for r in rows}
    assert all(0 < r["params"] <= 5_000_000 and r["macs"] > 0 for r in rows)


def test_train_then_export_json(runner, tmp_path):
    result = invoke(runner, "train", "--model", "eca_resnet", "--epochs", "1", "-o", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    trained = json.loads(result.stdout)
    assert trained["checkpoint"].endswith("eca_resnet.pt") and 0 <= trained["val_top1"] <= 100
    result = invoke(runner, "export", trained["checkpoint"], "-o", tmp_path / "m.onnx", "--json")
    assert result.exit_code == 0, result.output
    exported = json.loads(result.stdout)
    assert exported["onnx"].endswith("m.onnx")
    assert exported["max_abs_diff"] <= 1e-4 and exported["top1_agreement"] == 100.0


@pytest.mark.parametrize("args, message", [
    (["train", "--model", "cbam_resnt", "-o", "{tmp}"], "did you mean 'cbam_resnet'"),
    (["train", "--data", "{tmp}/nowhere", "-o", "{tmp}"], "does not exist"),
    (["export", "{tmp}/missing.pt", "-o", "{tmp}/m.onnx"], "does not exist"),
    (["export", "{ckpt}", "-o", "{tmp}/m.onnx", "--model", "bot_net"], "not bot_net"),
])
def test_bad_input_is_one_line_and_nonzero(runner, tmp_path, trained, args, message):
    args = [a.format(tmp=tmp_path, ckpt=trained[0]) for a in args]
    line = _one_error_line(invoke(runner, *args))
    assert message in line
    assert "Fix:" in line
    assert not (tmp_path / "m.onnx").exists()


def test_existing_checkpoint_is_kept_without_force(runner, tmp_path):
    target = tmp_path / "se_resnet.pt"
    target.write_bytes(b"good file")
    line = _one_error_line(invoke(runner, "train", "--epochs", "1", "-o", tmp_path))
    assert "--force" in line
    assert target.read_bytes() == b"good file"
