"""`edgepipe run` end to end, re-runs that reuse stages by their manifests, failures, Ctrl-C, and the CI gate on its report."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import invoke

from pipeline import run
from pipeline.errors import EdgepipeError

FAST = {"bench_batches": (1,), "bench_seconds": 0.2}


@pytest.fixture(scope="module")
def full_run(trained, tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    report = run.run(checkpoint=trained[0], output=folder, **FAST)
    return folder, report


def test_run_makes_every_artifact_and_a_report(full_run):
    folder, report = full_run
    for name in (
        "model.onnx",
        "model.fp16.onnx",
        "model.int8.onnx",
        "calib.npz",
        "model.fp32.engine",
        "model.fp16.engine",
        "model.int8.engine",
    ):
        assert (folder / name).is_file(), name
        assert (folder / f"{name}.manifest.json").is_file(), name
    for name in ("report.json", "report.md", "bench.png", "bench.md", "validate.json", "bench.json"):
        assert (folder / name).is_file(), name
    for name in ("validate.json", "bench.json"):
        assert json.loads((folder / f"{name}.manifest.json").read_text())["kind"] == "result"
    assert not (folder / "state.json").exists()
    assert not list(folder.glob("*.partial"))
    rows = {r["artifact"]: r for r in json.loads((folder / "report.json").read_text())["rows"]}
    assert list(rows) == ["pytorch", "onnx-fp32", "onnx-fp16", "onnx-int8", "engine-fp32", "engine-fp16", "engine-int8"]
    assert rows["pytorch"]["top1"] >= 98.0
    assert rows["onnx-fp32"]["agreement"] == 100.0
    assert abs(rows["onnx-fp16"]["delta"]) <= 0.1 and rows["onnx-fp16"]["agreement"] >= 99.9
    assert abs(rows["onnx-int8"]["delta"]) <= 0.5 and rows["onnx-int8"]["agreement"] >= 99.0
    for artifact in ("pytorch", "onnx-fp32", "onnx-fp16", "onnx-int8"):
        assert rows[artifact]["latency_ms"] > 0 and rows[artifact]["throughput"] > 0
        assert rows[artifact]["size_mb"] > 0
    if not os.environ.get("CUDA_VISIBLE_DEVICES") and not _has_gpu():
        assert rows["engine-int8"]["status"] == "skipped: no NVIDIA GPU"
    markdown = (folder / "report.md").read_text()
    assert markdown.startswith("# edgepipe run: se_resnet on digits, from se_resnet.pt\n")
    assert "Reference (PyTorch checkpoint): se_resnet.pt, top-1 " in markdown
    assert "| onnx-int8 | ONNX | int8 | ok |" in markdown
    assert "tensorrt-rtx" in markdown and "## Machine and tools" in markdown
    assert all(stage["status"] == "done" for stage in report["stages"].values())


def _has_gpu():
    import torch

    return torch.cuda.is_available()


def test_second_run_reuses_every_stage(full_run, trained):
    folder, first = full_run
    report = run.run(checkpoint=trained[0], output=folder, **FAST)
    assert {stage["status"] for stage in report["stages"].values()} == {"reused"}
    assert [r["top1"] for r in report["rows"]] == [r["top1"] for r in first["rows"]]


def test_changed_input_redoes_only_what_depends_on_it(full_run, trained):
    folder, _ = full_run
    report = run.run(
        checkpoint=trained[0], output=folder, precisions=("fp32", "int8"), **{**FAST, "bench_seconds": 0.3}
    )
    statuses = {name: stage["status"] for name, stage in report["stages"].items()}
    assert statuses["export"] == statuses["quantize-int8"] == statuses["build-int8"] == "reused"
    assert statuses["validate"] == statuses["bench"] == "done"  # fewer artifacts, new bench settings
    assert [r["artifact"] for r in report["rows"]] == [
        "pytorch",
        "onnx-fp32",
        "onnx-int8",
        "engine-fp32",
        "engine-int8",
    ]


def test_gate_on_a_real_report(full_run, runner, tmp_path):
    folder, _ = full_run
    baseline = tmp_path / "baseline.json"
    assert invoke(runner, "check", folder / "report.json", "--baseline", baseline, "--update-baseline").exit_code == 0
    result = invoke(runner, "check", folder / "report.json", "--baseline", baseline, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["compared"] >= 8


def test_training_run_and_failed_stage_is_recorded(tmp_path, runner):
    result = invoke(
        runner,
        "run",
        "--model",
        "eca_resnet",
        "--epochs",
        "1",
        "--precisions",
        "fp32",
        "--no-engines",
        "--batches",
        "1",
        "--bench-seconds",
        "0.1",
        "-o",
        tmp_path / "ok",
        "--json",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["model"] == "eca_resnet" and report["stages"]["train"]["status"] == "done"
    # A stage that fails is recorded with its reason; the stages that need it are skipped.
    (tmp_path / "other").mkdir()
    import numpy as np

    x = np.random.rand(30, 8, 8).astype("float32")
    x[:, 0, 0] = np.nan  # listed at the start; read, and refused, by the stage that reads it
    np.savez(tmp_path / "three.npz", x=x, y=np.arange(30) % 3)
    ckpt = tmp_path / "ok" / "checkpoint.pt"
    result = invoke(
        runner,
        "run",
        "--checkpoint",
        ckpt,
        "--data",
        tmp_path / "three.npz",
        "--precisions",
        "fp32",
        "--no-engines",
        "-o",
        tmp_path / "other",
        "--json",
    )
    assert result.exit_code == 1
    stages = json.loads(result.stdout)["stages"]
    assert stages["export"]["status"] == "failed" and "holds NaN or Inf values" in stages["export"]["reason"]
    assert stages["validate"]["status"] == "skipped"
    strict = invoke(
        runner,
        "run",
        "--checkpoint",
        ckpt,
        "--data",
        tmp_path / "three.npz",
        "--precisions",
        "fp32",
        "--no-engines",
        "-o",
        tmp_path / "other",
        "--strict",
    )
    last = strict.stderr.strip().splitlines()[-1]
    assert strict.exit_code == 1 and last.startswith("Error: ") and "NaN or Inf" in last


@pytest.mark.parametrize(
    "flag, content, message",
    [
        ("--checkpoint", None, "checkpoint {path} does not exist"),
        ("--checkpoint", b"not a checkpoint", "{path} is not a readable checkpoint"),
        ("--onnx", None, "ONNX model {path} does not exist"),
        ("--onnx", b"not an onnx model", "{path} is not a readable ONNX model"),
    ],
)
def test_missing_or_unreadable_input_stops_at_the_door(tmp_path, runner, flag, content, message):
    path = tmp_path / ("model.pt" if flag == "--checkpoint" else "model.onnx")
    if content is not None:
        path.write_bytes(content)
    folder = tmp_path / "never"
    result = invoke(runner, "run", flag, path, "-o", folder)
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert line.startswith("Error: " + message.format(path=path)) and "Fix:" in line and "\n" not in line
    assert not folder.exists()
    with pytest.raises(EdgepipeError):
        run.run(**{"checkpoint" if flag == "--checkpoint" else "onnx_model": path}, output=folder)
    assert not folder.exists()


def test_bad_run_options(tmp_path):
    with pytest.raises(EdgepipeError, match="alternatives"):
        run.run(model="se_resnet", onnx_model="x.onnx", output=tmp_path / "a")
    with pytest.raises(EdgepipeError, match="alternatives"):
        run.run(checkpoint="x.pt", onnx_model="x.onnx", output=tmp_path / "a")
    with pytest.raises(EdgepipeError, match="x.pt does not exist"):  # --model with --checkpoint names its code again
        run.run(model="se_resnet", checkpoint="x.pt", output=tmp_path / "a")
    with pytest.raises(EdgepipeError, match="'int4' is not a precision"):
        run.run(precisions=("int4",), output=tmp_path / "b")
    with pytest.raises(EdgepipeError, match="unknown model"):
        run.run(model="no_such_model", output=tmp_path / "c")
    assert not any(tmp_path.iterdir())


def test_ctrl_c_then_resume(trained, tmp_path):
    """SIGINT in the middle of a run: exit 130, nothing half-written; the next run resumes."""
    folder = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "run",
        "--checkpoint",
        str(trained[0]),
        "-o",
        str(folder),
        "--precisions",
        "fp32,int8",
        "--batches",
        "1",
        "--bench-seconds",
        "0.2",
    ]
    # A CI job started in the background inherits SIGINT ignored; give the run the default handling.
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while time.time() < deadline and "export" not in _finished(folder):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert not list(folder.glob(".*partial")) and not list(folder.glob("*.partial"))
    done_before = _finished(folder)
    assert "export" in done_before
    report = run.run(checkpoint=trained[0], output=folder, precisions=("fp32", "int8"), **FAST)
    assert all(report["stages"][name]["status"] == "reused" for name in done_before)
    assert all(r["status"] == "ok" for r in report["rows"] if r["format"] != "TensorRT")


# The file each stage of a run from a checkpoint makes; its manifest is written once it is finished.
OUTPUTS = {
    "export": "model.onnx",
    "calibrate": "calib.npz",
    "quantize-int8": "model.int8.onnx",
    "quantize-fp16": "model.fp16.onnx",
    "build-fp32": "model.fp32.engine",
    "build-fp16": "model.fp16.engine",
    "build-int8": "model.int8.engine",
    "validate": "validate.json",
    "bench": "bench.json",
}


def _finished(folder):
    return {stage for stage, name in OUTPUTS.items() if (folder / f"{name}.manifest.json").is_file()}


def test_run_from_an_onnx_model_uses_it_as_the_reference(exported, tmp_path, capsys):
    folder = tmp_path / "runs" / "[onnx]"  # brackets in a path print as they are
    report = run.run(onnx_model=exported, output=folder, precisions=("fp32", "fp16"), engines=False, **FAST)
    assert [r["artifact"] for r in report["rows"]] == ["onnx-fp32", "onnx-fp16"]
    assert report["reference"]["runner"].startswith("onnxruntime")
    assert report["rows"][0]["agreement"] == 100.0 and report["rows"][1]["agreement"] >= 99.9
    assert "train" not in report["stages"] and "export" not in report["stages"]
    assert report["model"] == "se_resnet" and report["source"] == {"start": "onnx", "file": str(exported)}
    markdown = (folder / "report.md").read_text()
    assert markdown.startswith("# edgepipe run: se_resnet on digits, from model.onnx\n")
    assert "Reference (FP32 ONNX on ONNX Runtime): model.onnx (onnxruntime-cpu), top-1 " in markdown
    assert "![latency against accuracy](bench.png)" in markdown
    capsys.readouterr()

    # A re-run on other data redoes validate, whose input it is, and nothing else.
    from sklearn.datasets import load_digits

    digits = load_digits()
    np.savez(tmp_path / "subset.npz", x=(digits.images[:600] / 16.0).astype("float32"), y=digits.target[:600])
    again = run.run(
        onnx_model=exported,
        output=folder,
        data=str(tmp_path / "subset.npz"),
        precisions=("fp32", "fp16"),
        engines=False,
        **FAST,
    )
    assert {name: s["status"] for name, s in again["stages"].items()} == {
        "import": "reused",
        "quantize-fp16": "reused",
        "validate": "done",
        "bench": "reused",
    }
    assert again["reference"]["samples"] == 600 and again["data"] == str(tmp_path / "subset.npz")
    err = capsys.readouterr().err
    assert "validate.json is redone: it was made from other inputs: another dataset" in err


def test_run_from_an_onnx_without_edgepipe_metadata_is_titled_by_its_file(exported, tmp_path):
    import onnx

    model = onnx.load(str(exported))
    del model.metadata_props[:]
    foreign = tmp_path / "resnet_foreign.onnx"
    onnx.save(model, str(foreign))
    report = run.run(onnx_model=foreign, output=tmp_path / "run", precisions=("fp32",), engines=False, **FAST)
    assert report["model"] == "resnet_foreign.onnx"
    assert (
        report["stages"]["validate"]["status"] == "failed"
        and "records no data" in report["stages"]["validate"]["reason"]
    )
    markdown = (tmp_path / "run" / "report.md").read_text()
    assert markdown.startswith("# edgepipe run: resnet_foreign.onnx on digits\n")
    assert "Reference (FP32 ONNX on ONNX Runtime): resnet_foreign.onnx, not measured (see Stages)." in markdown
