"""The GPU check's scripts, on the CPU: parts that reassemble to the same sha256, scripts that parse and
lint clean, and a probe that says, layer by layer, why nothing ran where there is no GPU."""

from __future__ import annotations

import ctypes.util
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
SHELL_SCRIPTS = [SCRIPTS / "gpu-prepare.sh", SCRIPTS / "gpu-check.sh"]
sys.path.insert(0, str(SCRIPTS))

import parts  # noqa: E402 - scripts/parts.py, the one split/join both scripts run


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def big_file(tmp_path) -> Path:
    path = tmp_path / "lib-1.0-py3-none-any.whl"
    path.write_bytes(os.urandom(5 * 2**20 + 12345))  # 5 MiB and a ragged tail
    return path


def _split(big_file: Path, dest: Path) -> Path:
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "parts.py"), "split", str(big_file), "--first-max-mib", "1.5", "--max-mib", "2"]
        + ["--dest", str(dest)],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(done.stdout.strip())


def test_parts_reassemble_to_the_original_sha256(big_file, tmp_path):
    manifest = _split(big_file, tmp_path / "gpu")
    recorded = json.loads(manifest.read_text())
    sizes = [p["bytes"] for p in recorded["parts"]]
    assert sizes[0] == int(1.5 * 2**20) and all(s <= 2 * 2**20 for s in sizes) and len(sizes) == 3
    assert sum(sizes) == big_file.stat().st_size and recorded["sha256"] == _sha256(big_file)
    # Every part's folder carries the manifest, so the folder that arrives first can tell what is missing.
    for n in range(1, 4):
        assert (tmp_path / "gpu" / f"p{n}" / manifest.name).read_text() == manifest.read_text()
    search = [str(tmp_path / "gpu" / f"p{n}") for n in range(1, 4)]
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "parts.py"), "join", str(manifest), "--search", *search]
        + ["--out", str(tmp_path / "joined")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    joined = Path(done.stdout.strip())
    assert joined.name == big_file.name and _sha256(joined) == _sha256(big_file)


def test_a_corrupt_part_is_named_and_nothing_is_written(big_file, tmp_path):
    manifest = _split(big_file, tmp_path / "gpu")
    third = tmp_path / "gpu" / "p3" / f"{big_file.name}.part3"
    data = bytearray(third.read_bytes())
    data[100] ^= 0xFF  # one flipped byte
    third.write_bytes(bytes(data))
    search = [tmp_path / "gpu" / f"p{n}" for n in range(1, 4)]
    with pytest.raises(SystemExit, match=r"part3 does not match its sha256"):
        parts.join(manifest, search, tmp_path / "joined")
    assert not (tmp_path / "joined").exists()


def test_a_missing_part_is_named(big_file, tmp_path):
    manifest = _split(big_file, tmp_path / "gpu")
    with pytest.raises(SystemExit, match=r"part2 is missing"):
        parts.join(manifest, [tmp_path / "gpu" / "p1"], tmp_path / "joined")
    assert not (tmp_path / "joined").exists()


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_parse(script):
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(
    shutil.which("shellcheck") is None, reason="shellcheck is not installed (apt-get install shellcheck)"
)
def test_shell_scripts_lint_clean():
    done = subprocess.run(["shellcheck", *map(str, SHELL_SCRIPTS)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_gpu_check_refuses_an_unknown_phase(tmp_path):
    env = {**os.environ, "EDGEPIPE_GPU_STASH": str(tmp_path / "stash")}
    done = subprocess.run(
        ["bash", str(SCRIPTS / "gpu-check.sh"), "--phase", "warp", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 2 and "unknown phase warp" in done.stderr


@pytest.mark.skipif(
    ctypes.util.find_library("cuda") is not None, reason="a CUDA driver is here: pytest -m gpu probes it"
)
def test_probe_without_a_gpu_names_the_driver_layer_and_skips_the_rest(tmp_path):
    out = tmp_path / "probe.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "gpu_probe.py"), "--out", str(out)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    layers = {r["layer"]: r for r in json.loads(out.read_text())["layers"]}
    assert layers["driver"]["ok"] is False and "libcuda" in layers["driver"]["error"]
    assert {n for n, r in layers.items() if r["ok"] is None} == set(layers) - {"driver"}
    assert layers["tensorrt-enqueue"]["skipped"] == "needs tensorrt-build"
    assert "layer driver: FAILED" in done.stdout
    summary = subprocess.run(
        [sys.executable, str(SCRIPTS / "gpu_summary.py"), "--logs", str(tmp_path), "--out", str(tmp_path / "o")]
        + ["--phases", "test"],
        capture_output=True,
        text=True,
    )
    assert summary.returncode == 0, summary.stderr
    assert "| driver | FAILED | OSError: libcuda.so.1" in (tmp_path / "o" / "summary.md").read_text()


@pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None, reason="TensorRT-RTX is not installed")
def test_probe_builds_its_model_with_the_real_tensorrt_rtx(tmp_path):
    """The probe's build step on the CPU (ahead of time for SM 8.9): the same code tries CURRENT on the GPU."""
    import probe_tensorrt
    import tensorrt_rtx

    engine = probe_tensorrt.build(tensorrt_rtx, probe_tensorrt.tiny_onnx(tmp_path), "SM89")
    assert len(engine) > 10_000


def test_summary_gives_pytorch_over_engine_per_precision_and_batch(tmp_path):
    """The issue's targets read off edgepipe bench's rows: FP16 vs PyTorch eager at batch 1, INT8 vs FP16 at 32."""
    import gpu_summary

    def row(fmt, precision, batch, median, status="ok"):
        return {"artifact": f"m.{precision}", "format": fmt, "precision": precision, "batch": batch}, {
            "status": status,
            "median_ms": median,
            "p99_ms": median and median * 2,
        }

    rows = [dict(a, **b) for a, b in (row("pytorch", "fp32", 1, 2.0), row("engine", "fp16", 1, 0.5))]
    rows += [dict(a, **b) for a, b in (row("pytorch", "fp32", 32, 8.0), row("engine", "int8", 32, 1.0))]
    rows += [dict(a, **b) for a, b in (row("engine", "fp32", 32, None, status="error"),)]
    (tmp_path / "bench.json").write_text(json.dumps({"device": "NVIDIA H200", "rows": rows}))
    (tmp_path / "steps.tsv").write_text("bench\t0\t12\nbench-cuda-graph\t-1\t0\n")
    summary = gpu_summary.summarize(tmp_path, "bench")
    assert summary["bench"]["speedup_vs_pytorch_eager"] == {"fp16@1": 4.0, "int8@32": 8.0}
    assert summary["steps"][1] == {"step": "bench-cuda-graph", "rc": -1, "seconds": 0}
    assert "| m.fp32 | engine | fp32 | 32 | error |" in gpu_summary.markdown(summary)
