"""Every example a user reads runs: each `edgepipe ...` / `build-engine ...` line of README.md, docs/*.md
and every command's --help, in human output and with --json.

A new example is tested by being written. Examples are found, not listed: fenced or indented code
lines of the Markdown files (with their `\\` continuations) and the lines under "Example" in each
command's --help. Each runs verbatim, as a fresh `edgepipe` process, inside one sandbox directory
holding every file the examples name (a trained se_resnet at runs/se/se_resnet.pt, its ONNX
models and calibration set, beside them model.onnx and model.fp16.onnx with images.npz of the
digits they take and their bundle/ (edgepipe package), a small ImageFolder photos/ with labels.txt, resnet.onnx exported
from a torch model outside the zoo, user model code, the CI baseline ...). The one substitution,
mechanical and made by `fast`: a command that trains gets `--epochs 1` (replacing its own
--epochs), so that the suite stays fast; and the file or folder an example writes (`-o`, `--saveEngine`) is
removed from the sandbox first, as a user running it for the first time would not have it.
Nothing else is changed.

An example that cannot run here is in SKIP with the reason (a GPU, a Ray cluster on other machines,
optional packages); one that fails today because of a known bug outside the command line is in
XFAIL (strict: the mark goes when the bug is fixed). Every other example must exit 0 (or the status
in STATUS) and never print a traceback. Examples that train and run every stage are `slow`.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
PREFIXES = ("edgepipe", "build-engine")

# Examples that cannot run on this machine, by the start of the command line, with the reason.
SKIP = {
    "edgepipe worker --address 10.0.0.1:6379": "joins a Ray cluster on another machine and blocks until stopped",
    "edgepipe sweep --models-file sweep.yaml --targets sm_89,sm_87,sm_80 --address HEAD:6379": "needs a Ray cluster's head",
    "edgepipe check /data/sweeps/": "a CI recipe: the sweep report of a GPU runner's workflow",
    "edgepipe run --model timm:seresnet18": "needs timm (make test-timm) and seresnet18 weights, never downloaded",
    "edgepipe quantize recognizer.onnx": "needs a text recognizer and its lines.npz (docs/foreign-onnx.md's own tests run one)",
    "edgepipe quantize rec.onnx": "needs a text recognizer and its .npz of inputs (test_any_onnx.py runs this pair)",
    "edgepipe validate --reference rec.onnx": "needs a text recognizer and its .npz of inputs (test_any_onnx.py runs this pair)",
    "edgepipe bench runs/se/model.onnx runs/se/model.fp16.engine": "benches an engine: needs an NVIDIA GPU",
    "edgepipe validate --reference resnet.onnx resnet.fp16.onnx resnet.int8.onnx resnet.int8.engine": (
        "validates an engine: needs an NVIDIA GPU"
    ),
}
# Known failures outside the command line's files, by command start and output ("human" or "json");
# strict: the mark must go when they are fixed.
XFAIL: dict[tuple[str, str], str] = {}
# Exit statuses other than 0 that an example documents.
STATUS: dict[str, int] = {
    # The gate after a 1-epoch run: accuracy below the committed baseline is a regression, exit 1.
    "edgepipe check runs/ci/report.json --baseline ci/baseline.json --tolerances ci/tolerances.yaml": 1,
    # docs/device.md: latency of two Jetson power modes is refused.
    "edgepipe check nano.json --baseline agx.json": 1,
}
# An example that reads what the example before it in the same document writes runs right after it.
AFTER = {"edgepipe check runs/ci/report.json": "edgepipe run -o runs/ci"}
# Where two documents give one file name two meanings, the sandbox file an example reads: name -> made as.
READS = {
    "edgepipe quantize resnet.onnx --int8 --calib calib.npz": {"calib.npz": "resnet.calib.npz"},
    "edgepipe package model.onnx --target jp5": {
        "labels.txt": "digits.labels.txt"
    },  # docs/device.md: the digits' labels
}
# Examples that train and run every stage, or build engines: minutes each on 2 CPUs.
# Quantization-aware training imports ModelOpt's whole PyTorch side and fine-tunes: 35-95 s each on 2 busy CPUs.
SLOW = (
    "edgepipe run",
    "edgepipe sweep",
    "build-engine",
    "edgepipe build",
    "edgepipe train",
    "edgepipe quantize runs/se/model.onnx --int8 --qat",
    *AFTER,
)


def _joined(lines: list[str]) -> list[str]:
    """Command lines of ``lines``, their trailing-backslash continuations joined."""
    found, pending = [], None
    for text in lines:
        text = text.strip()
        if pending is not None:
            pending += " " + text.rstrip("\\").strip()
            if not text.endswith("\\"):
                found.append(pending)
                pending = None
            continue
        text = text.removeprefix("$ ")
        if text.split(" ", 1)[0] in PREFIXES:
            command = text.split("  #")[0].strip()
            if command.endswith("\\"):
                pending = command.rstrip("\\").strip()
            else:
                found.append(command)
    return found


def markdown_examples(path: Path) -> list[str]:
    """Command lines in fenced code blocks and indented code lines of a Markdown file."""
    code, fenced = [], False
    for line in path.read_text().splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
        elif fenced or line.startswith("    "):
            code.append(line)
    return _joined(code)


def help_examples(name: str) -> list[str]:
    """Command lines under "Example" in ``edgepipe NAME --help`` (the command's docstring)."""
    from click.testing import CliRunner

    from pipeline.cli import main

    text = CliRunner().invoke(main, [name, "--help"]).output
    body = text.split("Options:")[0]
    return _joined(body.split("Example", 1)[1].splitlines()[1:]) if "Example" in body else []


def all_examples() -> list[tuple[str, str]]:
    """(where, command line) for every example, each command line once."""
    found: dict[str, str] = {}
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for command in markdown_examples(path):
            found.setdefault(command, str(path.relative_to(ROOT)))
    for name in sorted(COMMANDS):
        for command in help_examples(name):
            found.setdefault(command, f"edgepipe {name} --help")
    return [(where, command) for command, where in found.items()]


def fast(command: str) -> list[str]:
    """The example as argv, with the one documented substitution: training for 1 epoch."""
    args = shlex.split(command)
    if args[:2] in (["edgepipe", "train"], ["edgepipe", "run"], ["edgepipe", "sweep"]) and not any(
        a in args for a in ("--checkpoint", "--onnx")
    ):
        if "--epochs" in args:
            del args[args.index("--epochs") : args.index("--epochs") + 2]
        args += ["--epochs", "1"]
    return args


def _marks(command: str, output: str) -> list:
    marks = []
    skip = next((reason for start, reason in SKIP.items() if command.startswith(start)), None)
    if skip:
        marks.append(pytest.mark.skip(reason=skip))
    xfail = next((why for (start, mode), why in XFAIL.items() if command.startswith(start) and mode == output), None)
    if xfail:
        marks.append(pytest.mark.xfail(strict=True, reason=xfail))
    if command.startswith(SLOW):
        marks.append(pytest.mark.slow)
    return marks


EXAMPLES = all_examples()


# --- the sandbox: every file the examples name ----------------------------------------------------

USER_MODEL = """
import torch.nn as nn


def make_net(width=16, num_classes=10, in_chans=3):
    return nn.Sequential(
        nn.Conv2d(in_chans, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(width, num_classes),
    )
"""


def _photos(folder: Path, classes=("cat", "dog", "fox"), per_class=30, size=40) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for index, name in enumerate(classes):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            pixels[..., index] += 150  # each class has its own colour: a model can tell them apart
            Image.fromarray(pixels).save(folder / name / f"{i}.png")


def _digits_npz(path: Path, labels: Path) -> None:
    """The digits as a user brings them: pixels ``x`` (N,H,W floats in [0, 1]) and classes ``y``; their labels file."""
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    np.savez(path, x=(digits.images / 16.0).astype(np.float32), y=digits.target)
    labels.write_text("".join(f"{name}\n" for name in digits.target_names))


def _weights(path: Path) -> None:
    """A state dict of net.py's make_net, as safetensors."""
    import torch
    from safetensors.torch import save_file

    namespace: dict = {}
    exec(USER_MODEL, namespace)  # the same code the examples name as net.py:make_net
    torch.manual_seed(0)
    save_file(namespace["make_net"]().state_dict(), str(path))


def _resnet_onnx(path: Path, dynamic: bool = False, input_name: str = "input") -> None:
    """A small torch CNN from outside the zoo, at 224x224 as a torchvision ResNet is, exported to ONNX."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)
    ).eval()
    axes = {input_name: {0: "batch", 2: "height", 3: "width"}} if dynamic else {input_name: {0: "batch"}}
    torch.onnx.export(
        model,
        torch.zeros(1, 3, 224, 224),
        path,
        input_names=[input_name],
        output_names=["logits"],
        dynamic_axes=axes,
        opset_version=17,
        dynamo=False,
    )


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A directory holding every file the examples name, made once for the module."""
    import calibration
    from pipeline import export, quantize, train
    from pipeline.checkpoint import save_checkpoint

    work = tmp_path_factory.mktemp("examples")
    se = work / "runs" / "se"
    se.mkdir(parents=True)
    model, config = train.train("se_resnet", data="digits", seed=0, epochs=1, progress=False)
    save_checkpoint(se / "se_resnet.pt", model, config)
    export.export(se / "se_resnet.pt", se / "model.onnx", dynamic_batch=True)
    calibration.save(se / "calib.npz", calibration.draw_for(str(se / "se_resnet.pt"), num=128))
    quantize.to_fp16(se / "model.onnx", se / "model.fp16.onnx")
    quantize.to_int8(se / "model.onnx", se / "model.int8.onnx", calib=se / "calib.npz", max_drop=None)
    for name in ("model.onnx", "model.fp16.onnx"):  # docs/device.md's FP32 model and the FP16 one made from it
        shutil.copy(se / name, work / name)
    _digits_npz(work / "images.npz", work / "digits.labels.txt")
    shutil.copy(se / "calib.npz", work / "calib.npz")
    _photos(work / "photos")
    (work / "labels.txt").write_text("cat\ndog\nfox\n")
    _resnet_onnx(work / "resnet.onnx")
    _resnet_onnx(work / "resnet_dynamic.onnx", dynamic=True)
    _resnet_onnx(work / "dynamic.onnx", dynamic=True, input_name="image")
    quantize.to_fp16(work / "resnet.onnx", work / "resnet.fp16.onnx")
    quantize.to_int8(work / "resnet.onnx", work / "resnet.int8.onnx", data=str(work / "photos"), max_drop=None)
    _weights(work / "w.safetensors")
    for name in ("mynets.py", "net.py"):
        (work / name).write_text(USER_MODEL)
    shutil.copytree(ROOT / "ci", work / "ci")
    calibrate = "edgepipe calibrate --checkpoint resnet.onnx --data photos/ --labels labels.txt --resize 256 --crop 224"
    made = run_example(f"{calibrate} --num 512 -o resnet.calib.npz", work, as_json=True)  # docs/data.md's calib.npz
    assert made.returncode == 0, made.stderr
    bundle = "edgepipe package model.onnx model.fp16.onnx --target jp6 --data images.npz -o bundle/"
    made = run_example(bundle, work, as_json=True)  # docs/device.md's bundle, which validate checks models against
    assert made.returncode == 0, made.stderr
    (work / "sweep.yaml").write_text("models:\n  - se_resnet\n")
    _jetson_benches(work)
    return work


def _jetson_benches(work: Path) -> None:
    """docs/device.md's Jetson sysfs trees (jetson/BOARD) and the bench results of two of them (agx.json, nano.json)."""
    from pipeline import bench
    from pipeline.artifacts import write_json_atomic

    shutil.copytree(ROOT / "tests" / "fixtures" / "jetson", work / "jetson")
    for board, name in (("orin_agx", "agx.json"), ("orin_nano", "nano.json")):
        root = str(work / "jetson" / board)
        result = bench.bench([str(work / "model.onnx")], warmup_ms=0, iterations=20, progress=False, sysfs_root=root)
        write_json_atomic(work / name, result)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def run_example(command: str, cwd: Path, as_json: bool) -> subprocess.CompletedProcess:
    args = fast(command) + (["--json"] if as_json else [])
    for flag in (
        "-o",
        "--output",
        "--saveEngine",
        "--json-out",
    ):  # what the example writes, as a first run finds it: absent
        written = cwd / args[args.index(flag) + 1] if flag in args else None
        if written is not None and written.is_file():
            written.unlink()
        elif written is not None and written.is_dir():  # a bundle folder
            shutil.rmtree(written)
    entry = "pipeline.commands.build:build_engine_main" if args[0] == "build-engine" else "pipeline.cli:main"
    module, attribute = entry.split(":")
    code = f"import sys; from {module} import {attribute} as main; sys.argv[0] = {args[0]!r}; main({args[1:]!r})"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=1800
    )


def test_examples_are_found():
    """The finder sees the examples of README, the docs and every command's --help."""
    commands = [command for _, command in EXAMPLES]
    assert "edgepipe run -o runs/ci" in commands
    assert any(c.startswith("edgepipe calibrate --checkpoint runs/se/se_resnet.pt") for c in commands)
    assert {where for where, _ in EXAMPLES} >= {"README.md", "docs/data.md", "edgepipe models --help"}
    assert all(c.split()[0] in PREFIXES for c in commands)


@pytest.mark.parametrize(
    "where, command, as_json",
    [
        pytest.param(w, c, mode == "json", marks=_marks(c, mode), id=f"{c[:90]}-{mode}")
        for w, c in EXAMPLES
        for mode in ("human", "json")
    ],
)
def test_example_runs(sandbox, where, command, as_json, tmp_path):
    work = tmp_path / "sandbox"
    shutil.copytree(sandbox, work)  # each example starts from the same files, whatever another wrote
    for name, made_as in next((files for start, files in READS.items() if command.startswith(start)), {}).items():
        shutil.copy(work / made_as, work / name)
    before = next((first for start, first in AFTER.items() if command.startswith(start)), None)
    if before:
        assert run_example(before, work, as_json=True).returncode == 0, before
    done = run_example(command, work, as_json)
    output = done.stdout + done.stderr
    assert "Traceback" not in output, f"{command} ({where}) printed a traceback:\n{output[-3000:]}"
    assert done.returncode == STATUS.get(command, 0), f"{command} ({where}) exited {done.returncode}:\n{output[-3000:]}"
    if as_json and done.returncode == 0:
        import json

        json.loads(done.stdout.strip().splitlines()[-1])  # one JSON object on stdout
