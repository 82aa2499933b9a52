"""The CLI through Click's CliRunner: the command list, --json output, one-line errors, exit codes, start-up."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import invoke

from pipeline.cli import COMMANDS, main
from pipeline.commands.build import build_engine_main

ROOT = Path(__file__).resolve().parents[1]
# What a command that needs no model runtime must not import: each takes a second or more.
RUNTIMES = ("torch", "modelopt", "tensorrt", "tensorrt_rtx", "onnxruntime")


def _one_error_line(result, exit_code=1):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == exit_code, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Fix: " in lines[0], result.stderr
    assert "Traceback" not in result.output
    return lines[0]


# --- the command list ------------------------------------------------------------------------------


def test_help_lists_every_command_from_the_table(runner):
    result = invoke(runner, "--help")
    assert result.exit_code == 0
    listed = result.stdout.split("Commands:")[1].split()
    assert all(name in listed for name in COMMANDS)
    assert main.list_commands(None) == sorted(COMMANDS)


def test_table_matches_each_command(runner):
    """Each row names a command of that name, and its help is the command's first docstring line."""
    for name, short_help in COMMANDS.items():
        command = main.get_command(None, name)
        assert command is not None and command.name == name
        assert command.help.strip().splitlines()[0] == short_help, name


def test_every_command_has_help_with_an_example(runner):
    for name in COMMANDS:
        result = invoke(runner, name, "--help")
        assert result.exit_code == 0, name
        assert "Example" in result.stdout, name
    result = CliRunner().invoke(build_engine_main, ["--help"])
    assert result.exit_code == 0 and "Example:" in result.stdout and "Usage: build-engine" in result.stdout


def test_readme_names_every_command():
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in COMMANDS if f"edgepipe {name}" not in readme]
    assert not missing, f"README.md's command reference does not name: {missing}"
    assert "build-engine model.onnx" in readme


# --- start-up: commands load only what they need ----------------------------------------------------

PROBE = """
import json, sys
from {module} import {attribute} as command
try:
    command({args!r})
except SystemExit as exit:
    status = exit.code
sys.stderr.write("PROBE " + json.dumps({{"status": status, "loaded": sorted(m for m in {runtimes!r} if m in sys.modules)}}) + "\\n")
"""


def _probe(args, entry="pipeline.cli:main", runtimes=RUNTIMES, cwd=ROOT):
    """(exit status, runtimes imported) of a fresh process running the command."""
    module, attribute = entry.split(":")
    code = PROBE.format(module=module, attribute=attribute, args=[str(a) for a in args], runtimes=runtimes)
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)
    line = next((line for line in done.stderr.splitlines() if line.startswith("PROBE ")), None)
    assert line, done.stderr
    found = json.loads(line[len("PROBE ") :])
    return found["status"], found["loaded"]


# What --help must not import: numpy and onnx alone cost half of `import torch` in start-up.
HEAVY = ("numpy", "onnx", "torch", "onnxruntime", "modelopt", "tensorrt", "tensorrt_rtx")


@pytest.mark.parametrize("args", [["--help"], ["trian"], *([name, "--help"] for name in sorted(COMMANDS))])
def test_help_and_usage_errors_import_no_heavy_module(args):
    status, loaded = _probe(args, runtimes=HEAVY)
    assert status in (0, 2) and loaded == [], f"edgepipe {' '.join(args)} imported {loaded}"


def test_build_engine_help_imports_no_heavy_module():
    status, loaded = _probe(["--help"], entry="pipeline.commands.build:build_engine_main", runtimes=HEAVY)
    assert status == 0 and loaded == [], f"build-engine --help imported {loaded}"


def test_check_imports_no_model_runtime(tmp_path):
    report = tmp_path / "report.json"
    report.write_text("{}")
    status, loaded = _probe(["check", report, "--baseline", tmp_path / "missing.json"])
    assert status == 1 and loaded == []


def test_cached_build_imports_no_torch_onnxruntime_or_modelopt(exported, tmp_path):
    from pipeline import cuda
    from pipeline.tensorrt import backend

    if not backend.installed_backends():
        pytest.skip("no TensorRT or TensorRT-RTX installed")
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(exported.read_bytes())
    args = [
        onnx_path,
        "--fp16",
        "--minShapes",
        "input:1x1x32x32",
        "--optShapes",
        "input:4x1x32x32",
        "--maxShapes",
        "input:8x1x32x32",
    ]
    if backend.get_backend().name == backend.TENSORRT_RTX and cuda.current_compute_capability() is None:
        args += ["--computeCapability", "8.9"]
    first = CliRunner().invoke(build_engine_main, [str(a) for a in args], catch_exceptions=False)
    assert first.exit_code == 0, first.output
    status, loaded = _probe(
        args, entry="pipeline.commands.build:build_engine_main", runtimes=("torch", "modelopt", "onnxruntime")
    )
    assert status == 0 and loaded == [], f"a cached build-engine imported {loaded}"


# --- bad flags: one line, the fix, a non-zero exit --------------------------------------------------


@pytest.mark.parametrize(
    "args, message, exit_code",
    [
        (["trian"], "did you mean 'train'", 2),
        (["check", "--bogus"], "No such option", 2),
        (["check"], "Missing argument 'REPORT'", 2),
        (["bench", "x.onnx", "--batch", "1,x"], "--batch '1,x' is not a list of batch sizes", 1),
        (["bench", "x.onnx", "--iterations", "many"], "'many' is not a valid integer", 2),
        (["run", "--batches", "0"], "--batches '0' is not a list of batch sizes", 1),
        (["run", "--max-drop", "lots"], "--max-drop 'lots' is not a number of points", 1),
        (["run", "--max-drop", "-1"], "--max-drop '-1' is not a number of points", 1),
        (["run", "--precisions", "fp8"], "--precisions 'fp8' is not a precision", 1),
        (["run", "--precisions", ","], "--precisions names no precision", 1),
        (["build", "x.onnx", "--fp16", "--fp32"], "choose one precision, not --fp16 and --fp32", 1),
        (["build"], "missing the ONNX model", 1),
        (["build", "a.onnx", "--onnx", "b.onnx"], "given twice", 1),
        (["quantize", "x.onnx", "-o", "y.onnx"], "exactly one of --fp16 and --int8", 1),
        (["quantize", "x.onnx", "--fp16", "--max-drop", "0.5", "-o", "y.onnx"], "--max-drop only applies to --int8", 1),
        *(
            (args, "--input-size '3x' is not a size in the format [C x] H x W", 1)
            for args in (
                ["train", "--input-size", "3x", "-o", "runs/never"],
                ["export", "m.pt", "--input-size", "3x", "-o", "never.onnx"],
                ["run", "--input-size", "3x", "-o", "runs/never"],
                ["quantize", "x.onnx", "--fp16", "--input-size", "3x", "-o", "never.onnx"],
                ["bench", "x.onnx", "--input-size", "3x"],
            )
        ),
        (["bench", "x.onnx", "--input-size", "0x32"], "e.g. --input-size 96x96, or", 1),
        (["export", "-o", "never.onnx"], "no checkpoint or weights file given", 1),
        (["export", "a.pt", "--weights", "b.pt", "-o", "never.onnx"], "pass the file once", 1),
    ],
)
def test_bad_flags_are_one_line(runner, args, message, exit_code):
    line = _one_error_line(invoke(runner, *args), exit_code)
    assert message in line


def test_input_size_is_one_format():
    from pipeline.inputsize import InputSize

    assert InputSize.parse("3x96x128") == InputSize(96, 128, channels=3)
    assert InputSize.parse("96X128") == InputSize(96, 128) and InputSize.parse(" 64 ") == InputSize(64, 64)
    assert InputSize.parse("96x128").chw(1) == (1, 96, 128) and InputSize.parse("3x8x8").chw(1) == (3, 8, 8)
    assert InputSize.parse("96x128").hw == (96, 128) and str(InputSize.parse("3x8x8")) == "3x8x8"
    InputSize(8, 8).check_channels(3)  # HxW keeps the model's channels
    with pytest.raises(Exception, match="names 3 channels but the model takes 1"):
        InputSize(8, 8, 3).check_channels(1)


def test_build_engine_with_two_precisions_is_one_line(tmp_path):
    result = CliRunner().invoke(
        build_engine_main, [str(tmp_path / "model.onnx"), "--fp16", "--int8"], catch_exceptions=False
    )
    line = _one_error_line(result)
    assert "choose one precision, not --fp16 and --int8" in line and "exactly one of --fp16, --int8 and --fp32" in line


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


def test_export_takes_weights_as_an_option_or_an_argument(runner, tmp_path, trained):
    by_option = invoke(runner, "export", "--weights", trained[0], "-o", tmp_path / "a.onnx", "--json")
    assert by_option.exit_code == 0, by_option.output
    by_argument = invoke(runner, "export", trained[0], "-o", tmp_path / "b.onnx", "--input-size", "32x32", "--json")
    assert by_argument.exit_code == 0, by_argument.output
    a, b = json.loads(by_option.stdout), json.loads(by_argument.stdout)
    assert a["input_shape"] == b["input_shape"] == [1, 32, 32]  # HxW keeps the checkpoint's channels
    assert a["max_abs_diff"] <= 1e-4 and b["top1_agreement"] == 100.0


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--model", "cbam_resnt", "-o", "{tmp}"], "did you mean 'cbam_resnet'"),
        (["train", "--data", "{tmp}/nowhere", "-o", "{tmp}"], "does not exist"),
        (["export", "{tmp}/missing.pt", "-o", "{tmp}/m.onnx"], "does not exist"),
        (["export", "{ckpt}", "-o", "{tmp}/m.onnx", "--model", "bot_net"], "not bot_net"),
    ],
)
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
