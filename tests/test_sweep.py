"""`edgepipe sweep` on embedded Ray: 2 models x 2 precisions x 2 targets on the bundled digits.

The embedded node advertises fake device resources (sm_89, sm_75) the way `edgepipe worker`
advertises a GPU; its engines are built for real by TensorRT-RTX ahead of time on the CPU. No
node advertises sm_87 (Jetson Orin), so those cells are skipped with that reason.
"""

import json
import os
import shutil
import signal
import threading
import time

import psutil
import pytest
from conftest import invoke

from pipeline import sweep
from pipeline.artifacts import read_manifest
from pipeline.digest import sha256_file
from pipeline.errors import EdgepipeError

pytest.importorskip("ray")
pytest.importorskip("tensorrt_rtx")

MODELS = ["se_resnet", "eca_resnet"]
FAST = {"epochs": 1, "bench_batches": (1,), "bench_seconds": 0.1, "max_drop": None}
CLI_FAST = ["--epochs", "1", "--batches", "1", "--bench-seconds", "0.1", "--max-drop", "none"]


@pytest.fixture(scope="module")
def embedded_ray():
    import ray

    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # a test cluster on this machine only; no token file in ~/.ray
    ray.init(
        address="local", num_cpus=2, resources={"sm_89": 1, "sm_75": 1}, include_dashboard=False, log_to_driver=False
    )
    try:
        yield ray
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved


@pytest.fixture(scope="module")
def first_sweep(embedded_ray, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    report = sweep.sweep(models=MODELS, precisions=["fp32", "int8"], targets=["sm_89", "sm_87"], output=folder, **FAST)
    return folder, report


def _cells(report):
    return {row["artifact"]: row for row in report["rows"] if row["kind"] == "cell"}


def _copy_models(source, destination):
    """The prepared model directories without their engines, so a sweep there rebuilds the cells."""
    for model in MODELS:
        shutil.copytree(
            source / model, destination / model, ignore=shutil.ignore_patterns("*.engine", "*.engine.manifest.json")
        )


def test_sweep_builds_served_targets_and_skips_the_others(first_sweep):
    folder, report = first_sweep
    cells = _cells(report)
    assert len(cells) == 2 * 2 * 2 and report["submitted"] == 4
    for model in MODELS:
        assert (folder / model / "report.json").is_file() and (folder / model / "model.int8.onnx").is_file()
        for precision in ("fp32", "int8"):
            built = cells[f"{model}/engine-{precision}-sm_89"]
            assert built["status"] == "built", built
            engine = folder / built["engine"]
            manifest = read_manifest(engine)
            assert sha256_file(engine) == built["sha256"] == manifest["sha256"]
            assert manifest["backend"] == "tensorrt-rtx" and manifest["target_compute_capabilities"] == ["8.9"]
            assert manifest["inputs"]["onnx"] == sha256_file(folder / model / manifest["onnx"])
            assert built["validation"].startswith("skipped: no sm_89 GPU on")
            assert cells[f"{model}/engine-{precision}-sm_87"]["status"] == "skipped: no worker advertises sm_87"
    assert report["cells"] == {"built": 4, "reused": 0, "skipped": 4, "failed": 0} and report["ok"]
    assert not list(folder.rglob("*.partial"))
    saved = json.loads((folder / "sweep.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(report["rows"]))
    markdown = (folder / "sweep.md").read_text()
    assert "| se_resnet | int8 | sm_87 | skipped: no worker advertises sm_87 |" in markdown
    assert "| eca_resnet | fp32 | sm_89 | built |" in markdown


def test_resweep_with_nothing_changed_submits_nothing(first_sweep, runner):
    folder, report = first_sweep
    result = invoke(
        runner,
        "sweep",
        "--models",
        ",".join(MODELS),
        "--precisions",
        "fp32,int8",
        "--targets",
        "sm_89,sm_87",
        "-o",
        folder,
        *CLI_FAST,
        "--json",
    )
    assert result.exit_code == 0, result.output
    again = json.loads(result.stdout)
    assert again["submitted"] == 0 and again["cells"]["reused"] == 4
    before, after = _cells(report), _cells(again)
    for artifact, row in after.items():
        if row["status"] == "reused":
            assert row["sha256"] == before[artifact]["sha256"] == sha256_file(folder / row["engine"])
            assert row["node_id"] == before[artifact]["node_id"]  # kept from the sweep that built it


def test_check_gates_a_sweep_report(first_sweep, runner, tmp_path):
    folder, _ = first_sweep
    baseline = tmp_path / "baseline.json"
    assert invoke(runner, "check", folder / "sweep.json", "--baseline", baseline, "--update-baseline").exit_code == 0
    result = invoke(runner, "check", folder / "sweep.json", "--baseline", baseline, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["compared"] >= 2 * 3  # every model's PyTorch, FP32 and INT8 ONNX rows


def test_models_file_with_an_onnx_model_of_your_own(first_sweep, tmp_path):
    source, _ = first_sweep
    shutil.copy(source / "se_resnet" / "model.onnx", tmp_path / "vendor.onnx")
    models_file = tmp_path / "sweep.yaml"
    models_file.write_text("models:\n  - name: vendor\n    onnx: vendor.onnx\nprecisions: [fp32]\ntargets: [sm_89]\n")
    report = sweep.sweep(models_file=models_file, output=tmp_path / "out", **FAST)
    cell = _cells(report)["vendor/engine-fp32-sm_89"]
    assert cell["status"] == "built", cell
    manifest = read_manifest(tmp_path / "out" / cell["engine"])
    # Built from the run's import of the ONNX model (its record stored, as for any ONNX start); the run
    # directory holds it, the engine and the run report.
    imported = tmp_path / "out" / "vendor" / "model.onnx"
    assert manifest["onnx"] == str(imported) and manifest["inputs"]["onnx"] == sha256_file(imported)
    assert (tmp_path / "out" / "vendor" / "report.json").is_file() and report["ok"]


def test_worker_killed_mid_task_is_retried(first_sweep, tmp_path):
    source, first = first_sweep
    _copy_models(source, tmp_path)
    outcome = {}
    thread = threading.Thread(
        target=lambda: outcome.update(
            report=sweep.sweep(models=MODELS, precisions=["fp32", "int8"], targets=["sm_89"], output=tmp_path, **FAST)
        )
    )
    thread.start()
    killed = None
    deadline = time.monotonic() + 300
    while thread.is_alive() and killed is None and time.monotonic() < deadline:
        for process in psutil.Process().children(recursive=True):  # only Ray processes this test started
            try:
                title = " ".join(process.cmdline())
            except psutil.Error:
                continue
            if title.startswith("ray::cell:"):
                os.kill(process.pid, signal.SIGKILL)
                killed = (process.pid, title.split()[0].removeprefix("ray::cell:"))
                break
        time.sleep(0.01)
    thread.join()
    assert killed, "no cell task was seen running"
    cells = _cells(outcome["report"])
    assert {row["status"] for row in cells.values()} == {"built"}
    assert cells[killed[1]]["pid"] != killed[0]  # finished by another worker process
    for row in cells.values():
        assert (
            sha256_file(tmp_path / row["engine"]) == row["sha256"] == read_manifest(tmp_path / row["engine"])["sha256"]
        )
    assert len({row["sha256"] for row in cells.values()}) == 4
    assert not list(tmp_path.rglob("*.partial"))
    assert (
        sweep.sweep(models=MODELS, precisions=["fp32", "int8"], targets=["sm_89"], output=tmp_path, **FAST)["submitted"]
        == 0
    )


def test_build_error_is_recorded_and_strict_stops(first_sweep, tmp_path):
    source, _ = first_sweep
    _copy_models(source, tmp_path)
    # Turing (sm_75) has no FP32 matrix multiply in TensorRT-RTX: a real build error.
    report = sweep.sweep(models=MODELS[:1], precisions=["fp32", "int8"], targets=["sm_75"], output=tmp_path, **FAST)
    cells = _cells(report)
    failed = cells["se_resnet/engine-fp32-sm_75"]
    assert failed["status"].startswith("failed: TensorRT-RTX") and "Turing" in failed["status"]
    assert cells["se_resnet/engine-int8-sm_75"]["status"] == "built"
    assert not report["ok"] and not (tmp_path / "se_resnet" / "model.fp32.sm_75.engine").exists()
    with pytest.raises(EdgepipeError, match="--strict stopped the sweep"):
        sweep.sweep(models=MODELS, precisions=["fp32", "int8"], targets=["sm_75"], output=tmp_path, strict=True, **FAST)
    stopped = json.loads((tmp_path / "sweep.json").read_text())
    assert stopped["stopped_by"].startswith("se_resnet/engine-fp32-sm_75 failed") and not stopped["ok"]
    statuses = [row["status"] for row in _cells(stopped).values()]
    # eca_resnet's cells queue behind the failing one on the single sm_75 slot: they are cancelled.
    assert "skipped: --strict stopped the sweep" in statuses
    assert all(
        s in ("built", "reused", "skipped: --strict stopped the sweep") or s.startswith("failed: TensorRT-RTX")
        for s in statuses
    )


def test_models_file_entry_with_an_onnx_from_elsewhere_and_its_images(tmp_path):
    """An ONNX edgepipe did not export, with its own images, labels-free, and a preprocessing file."""
    import numpy as np
    from foreign_models import foreign_model
    from PIL import Image

    shutil.copy(foreign_model("text_recognizer"), tmp_path / "recognizer.onnx")
    lines = tmp_path / "lines"
    lines.mkdir()
    rng = np.random.default_rng(0)
    for i in range(80):
        Image.fromarray(rng.integers(0, 256, (40, 150), dtype=np.uint8)).save(lines / f"line_{i:02d}.png")
    (tmp_path / "recognizer.yaml").write_text("resize: [32, 128]\n")
    models_file = tmp_path / "sweep.yaml"
    models_file.write_text(
        "models:\n  - name: recognizer\n    onnx: recognizer.onnx\n    data: lines\n    preprocess: recognizer.yaml\n"
        "precisions: [fp16]\ntargets: [sm_89]\n"
    )
    report = sweep.sweep(models_file=models_file, output=tmp_path / "out", **FAST)
    cell = _cells(report)["recognizer/engine-fp16-sm_89"]
    assert cell["status"] == "built", cell
    fp16 = read_manifest(tmp_path / "out" / "recognizer" / "model.fp16.onnx")
    assert (
        fp16["check"]["on"] == "data" and fp16["check"]["text"] == "16 held-out images of lines"
    )  # its own images, not synthetic inputs
    assert fp16["check"]["split"]["counts"] == {"pool": 64, "held_out": 16} and report["ok"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  - name: recognizer\n    onnx: recognizer.onnx\n    preprocess: missing.yaml\n")
    with pytest.raises(EdgepipeError, match="missing.yaml, which does not exist"):
        sweep.sweep(models_file=bad, output=tmp_path / "bad", **FAST)
    assert not (tmp_path / "bad").exists()
