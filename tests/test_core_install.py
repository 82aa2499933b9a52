"""The light core install, built for real: a clean venv with edgepipe's core dependencies (resolved by pip
from the index, its cache making it quick) plus TensorRT-RTX, and nothing else.

In it: every command's --help works; ``build-engine model.fp16.onnx`` builds (TensorRT-RTX builds on
the CPU); ``edgepipe validate BUNDLE model.fp16.onnx`` passes on onnx's reference evaluator; a
command that needs an extra says which in one line; torch, ONNX Runtime, ModelOpt and pycuda are not
installed. The venv's size without TensorRT is at most 300 MB (printed: run with -s to see it).
Slow (a minute or more, longer with a cold pip cache): ``make test-core`` or ``pytest -m slow tests/test_core_install.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import onnx
import pytest

from pipeline.cli import COMMANDS
from tests.conftest import invoke
from tests.deploy_models import classifier, images_npz

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
ABSENT = ("torch", "onnxruntime", "nvidia-modelopt", "pycuda", "scikit-learn", "matplotlib")
LIMIT_MB = 300


def _size_mb(folder: Path, leave_out: str = "tensorrt") -> float:
    """Bytes of every file under ``folder`` (symlinks not followed), less those of packages named ``leave_out*``."""
    total = 0
    for path in folder.rglob("*"):
        parts = path.relative_to(folder).parts
        if path.is_file() and not path.is_symlink() and not any(p.startswith(leave_out) for p in parts):
            total += path.stat().st_size
    return total / 1e6


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    """(venv bin folder, its size in MB without TensorRT) of a fresh venv with the core install and TensorRT-RTX."""
    work = tmp_path_factory.mktemp("core")
    source = work / "edgepipe"  # the project's files, so that pip builds outside the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "pipeline", "models", "calibration"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if (ROOT / name).is_dir() else {}))  # fmt: skip
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, str(source)], check=True, timeout=1800)
    rtx = metadata.version("tensorrt-rtx")  # the release this environment has, which pip's cache holds
    subprocess.run([*pip, f"tensorrt-rtx=={rtx}"], check=True, timeout=1800)
    site = next((venv / "lib").glob("python3*/site-packages"))
    size = _size_mb(venv)
    print(f"\ncore venv: {size:.0f} MB without TensorRT ({_size_mb(site):.0f} MB of site-packages), "
          f"{_size_mb(venv, leave_out='-'):.0f} MB with TensorRT-RTX {rtx}")  # fmt: skip
    return venv / "bin", size


@pytest.fixture(scope="module")
def device_files(tmp_path_factory):
    """model.onnx, model.fp16.onnx and their bundle, made here (with every extra), to take to the device."""
    from click.testing import CliRunner
    from onnxconverter_common import float16

    folder = tmp_path_factory.mktemp("device")
    fp32 = classifier(folder)
    onnx.save(
        float16.convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True), str(folder / "model.fp16.onnx")
    )
    made = invoke(CliRunner(), "package", fp32, folder / "model.fp16.onnx", "--target", "rtx", "--data",
                  images_npz(folder), "-o", folder / "bundle")  # fmt: skip
    assert made.exit_code == 0, made.output
    return folder


def _run(bin_folder: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(bin_folder / args[0]), *args[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


def test_core_venv_is_light_and_lacks_the_heavy_packages(core):
    bin_folder, size = core
    listed = _run(bin_folder, "python", "-m", "pip", "list", "--format=json", cwd=bin_folder)
    installed = {package["name"].lower().replace("_", "-") for package in json.loads(listed.stdout)}
    assert "edgepipe" in installed and "polygraphy" in installed and "tensorrt-rtx" in installed
    assert not installed & set(ABSENT), installed & set(ABSENT)
    assert size <= LIMIT_MB, f"the core venv is {size:.0f} MB without TensorRT (limit {LIMIT_MB} MB)"


def test_every_commands_help_works(core, tmp_path):
    bin_folder, _ = core
    for args in [
        ["edgepipe", "--help"],
        ["build-engine", "--help"],
        *[["edgepipe", name, "--help"] for name in COMMANDS],
    ]:
        done = _run(bin_folder, *args, cwd=tmp_path)
        assert done.returncode == 0 and "Usage:" in done.stdout, f"{' '.join(args)}: {done.stderr[-2000:]}"


def test_build_engine_and_validate_against_the_bundle(core, device_files, tmp_path):
    bin_folder, _ = core
    work = shutil.copytree(device_files, tmp_path / "device")
    built = _run(bin_folder, "build-engine", "model.fp16.onnx", "--json", cwd=work)
    assert built.returncode == 0, built.stderr[-3000:]
    assert (work / "model.fp16.engine").is_file() and json.loads(built.stdout)["precision"] == "fp16"
    checked = _run(bin_folder, "edgepipe", "validate", "bundle/", "model.fp16.onnx", "--json", cwd=work)
    assert checked.returncode == 0, checked.stderr[-3000:]
    row = json.loads(checked.stdout)["rows"][0]
    assert row["passed"] and row["runner"].startswith("onnx-reference") and row["made_from"] == "model.fp16.onnx"
    human = _run(bin_folder, "edgepipe", "validate", "bundle/golden_outputs.json", "model.fp16.onnx", cwd=work)
    assert human.returncode == 0 and "passed" in human.stdout, human.stderr[-3000:]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["edgepipe", "train", "--model", "se_resnet", "-o", "out"], "needs torch, which is not installed. Fix: pip install 'edgepipe[train]'."),
        (["edgepipe", "quantize", "model.onnx", "--fp16", "-o", "q.onnx"], "edgepipe[quantize]"),
    ],
)  # fmt: skip
def test_a_command_whose_extra_is_missing_says_which_in_one_line(core, device_files, tmp_path, args, needle):
    bin_folder, _ = core
    work = shutil.copytree(device_files, tmp_path / "device")
    done = _run(bin_folder, *args, cwd=work)
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert done.returncode == 1 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert needle in errors[0], errors[0]
    assert not (work / "out").exists() and not (work / "q.onnx").exists()
