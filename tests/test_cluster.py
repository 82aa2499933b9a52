"""`edgepipe sweep` on a real two-node Ray cluster on loopback, `edgepipe worker`, and bad input.

The head (`ray start --head`, advertising sm_89) and a worker (`edgepipe worker`, advertising
sm_86) run as separate processes with their own temp dirs, each stopped by its pid. The sweep
runs as the `edgepipe` command in another process, from a directory of its own, as a user's would.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import invoke

from pipeline.errors import EdgepipeError
from pipeline.sweep import cluster

pytest.importorskip("ray")
pytest.importorskip("tensorrt_rtx")

REPO = Path(__file__).resolve().parents[1]
CLI_FAST = ["--epochs", "1", "--batches", "1", "--bench-seconds", "0.1", "--max-drop", "none"]


def _env(pythonpath=REPO):
    # RAY_AUTH_MODE explicit: Ray 2.60 otherwise turns token auth on and writes ~/.ray/auth_token.
    return {**os.environ, "PYTHONPATH": str(pythonpath), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(command, log, env):
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop(process):
    """SIGTERM the `ray start --block` process: it stops its node's raylet, workers and (head) GCS."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: only this node's processes
            process.wait()


def _wait_for_nodes(address, count, timeout=120):
    code = (
        f"import ray; ray.init(address={address!r}, log_to_driver=False); print(sum(n['Alive'] for n in ray.nodes()))"
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        probe = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
        if probe.stdout.strip() == str(count):
            return
        time.sleep(1)
    raise AssertionError(f"the cluster at {address} never had {count} nodes")


def _short_temp_dir(base):
    """Ray's socket paths must stay under 107 bytes: its temp dirs go right under /tmp."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix=f"ep-{base}-", dir="/tmp"))


def _worker(address, target, temp_dir, log, pythonpath=REPO):
    command = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "worker",
        "--address",
        address,
        "--targets",
        target,
        "--num-cpus",
        "1",
        "--temp-dir",
        str(temp_dir),
    ]
    return _start(command, log, _env(pythonpath))


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cluster")
    address = f"127.0.0.1:{_free_port()}"
    logs = open(folder / "nodes.log", "wb")
    temp_dirs = [_short_temp_dir("head"), _short_temp_dir("worker")]
    head_command = [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "start",
        "--head",
        "--block",
        f"--port={address.split(':')[1]}",
        "--num-cpus=1",
        '--resources={"sm_89": 1}',
        "--include-dashboard=false",
        f"--temp-dir={temp_dirs[0]}",
    ]
    processes = [_start(head_command, logs, _env())]
    try:
        _wait_for_nodes(address, 1)
        processes.append(_worker(address, "sm_86", temp_dirs[1], logs))
        _wait_for_nodes(address, 2)
        yield address, folder
    finally:
        for process in reversed(processes):
            _stop(process)
        logs.close()
        for temp_dir in temp_dirs:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _sweep(args, cwd, env=None):
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "sweep", *map(str, args)],
        cwd=cwd,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.slow  # a real two-node cluster and a sweep in its own process: about 90 s
def test_each_cell_runs_on_the_node_with_its_resource(two_nodes, tmp_path):
    address, _ = two_nodes
    out = tmp_path / "sweep"
    result = _sweep(
        [
            "--models",
            "se_resnet",
            "--precisions",
            "fp32",
            "--targets",
            "sm_89,sm_86,sm_87",
            "-o",
            out,
            "--address",
            address,
            *CLI_FAST,
            "--json",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    nodes = {node["node_id"]: node for node in report["cluster"]["nodes"]}
    assert len(nodes) == 2
    cells = {row["target"]: row for row in report["rows"] if row["kind"] == "cell"}
    for target in ("sm_89", "sm_86"):
        assert cells[target]["status"] == "built", cells[target]
        assert target in nodes[cells[target]["node_id"]]["targets"]
        assert (out / cells[target]["engine"]).is_file()
    assert cells["sm_89"]["node_id"] != cells["sm_86"]["node_id"]
    assert cells["sm_87"]["status"] == "skipped: no worker advertises sm_87"
    assert report["submitted"] == 2


@pytest.mark.slow  # a real two-node cluster and a sweep in its own process: about 90 s
def test_node_with_another_edgepipe_is_refused(two_nodes, tmp_path):
    address, folder = two_nodes
    other = tmp_path / "other-edgepipe"
    for package in ("pipeline", "models", "calibration"):
        shutil.copytree(REPO / package, other / package, ignore=shutil.ignore_patterns("__pycache__"))
    init = other / "pipeline" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "', '__version__ = "0.0.9-'))
    temp_dir = _short_temp_dir("other")
    with open(tmp_path / "node.log", "wb") as log:
        node = _worker(address, "sm_80", temp_dir, log, pythonpath=other)
        try:
            _wait_for_nodes(address, 3)
            out = tmp_path / "sweep"
            result = _sweep(
                ["--models", "se_resnet", "--targets", "sm_89", "-o", out, "--address", address, *CLI_FAST],
                cwd=tmp_path,
            )
        finally:
            _stop(node)
            shutil.rmtree(temp_dir, ignore_errors=True)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert (
        lines[-1].startswith("Error: node ")
        and "runs edgepipe 0.0.9-" in lines[-1]
        and "pip install 'edgepipe[ray]==" in lines[-1]
    )
    assert not out.exists()  # refused before anything was prepared or submitted


def test_ray_version_differences_are_refused_by_name():
    nodes = [
        cluster.Node(
            "a" * 56, "10.0.0.2", {"CPU": 4.0, "sm_87": 1.0}, {"host": "orin", "edgepipe": "0.1.0", "ray": "2.59.0"}
        )
    ]
    with pytest.raises(
        EdgepipeError, match=r"node orin \(aaaaaaaa\) runs ray 2.59.0, this driver 2.60.0.*pip install 'ray==2.60.0'"
    ):
        cluster.check_versions(nodes, {"edgepipe": "0.1.0", "ray": "2.60.0"})


def test_worker_advertises_what_this_machine_builds(runner):
    result = invoke(runner, "worker", "--address", "10.0.0.1:6379", "--num-cpus", "2", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    # No GPU here: every TensorRT-RTX target from Ampere on, built ahead of time, one per CPU.
    assert plan["resources"] == {"sm_80": 2.0, "sm_86": 2.0, "sm_89": 2.0, "sm_120": 2.0, "sm_121": 2.0}
    assert plan["command"][:4] == ["ray", "start", "--address", "10.0.0.1:6379"] and "--block" in plan["command"]
    jetson = json.loads(
        invoke(runner, "worker", "--address", "10.0.0.1:6379", "--targets", "sm_87", "--dry-run", "--json").stdout
    )
    assert jetson["resources"] == {"sm_87": 1.0}


def _one_line_error(result):
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: ") and ". Fix: " in lines[0], (
        result.output
    )
    return lines[0]


def test_unreachable_address(runner, tmp_path):
    port = _free_port()  # nothing listens there
    line = _one_line_error(
        invoke(runner, "sweep", "--models", "se_resnet", "--address", f"127.0.0.1:{port}", "-o", tmp_path / "out")
    )
    assert f"cannot reach a Ray head at 127.0.0.1:{port}" in line
    assert not (tmp_path / "out").exists()


def test_bad_address_and_target_names(runner, tmp_path):
    assert "--address 'headnode' is not local, auto or HOST:PORT" in _one_line_error(
        invoke(runner, "sweep", "--models", "se_resnet", "--address", "headnode", "-o", tmp_path / "out")
    )
    assert "target '8.9' is not sm_XY" in _one_line_error(
        invoke(runner, "sweep", "--models", "se_resnet", "--targets", "sm_89,8.9", "-o", tmp_path / "out")
    )
    assert "target 'sm89' is not sm_XY" in _one_line_error(
        invoke(runner, "worker", "--address", "10.0.0.1:6379", "--targets", "sm89", "--dry-run")
    )
    assert not (tmp_path / "out").exists()


def test_a_target_no_gpu_has_is_refused_at_the_door(runner, tmp_path):
    """A typo such as sm_999 is refused before anything trains, with the targets GPUs have."""
    line = _one_line_error(
        invoke(runner, "sweep", "--models", "se_resnet", "--targets", "sm_89,sm_999", "-o", tmp_path / "out")
    )
    assert "target 'sm_999' is no NVIDIA GPU architecture" in line and "sm_87" in line and "sm_121" in line
    assert not (tmp_path / "out").exists()
    line = _one_line_error(invoke(runner, "worker", "--address", "10.0.0.1:6379", "--targets", "sm_99", "--dry-run"))
    assert "target 'sm_99' is no NVIDIA GPU architecture" in line


def test_models_file_with_an_unknown_model_suggests_close_names(runner, tmp_path):
    models_file = tmp_path / "sweep.yaml"
    models_file.write_text("models:\n  - se_resnet\n  - name: cbam_resnt\n    epochs: 1\ntargets: [sm_89]\n")
    line = _one_line_error(invoke(runner, "sweep", "--models-file", models_file, "-o", tmp_path / "out"))
    assert f"models file {models_file} names unknown model 'cbam_resnt' (did you mean 'cbam_resnet'?)" in line
    assert not (tmp_path / "out").exists()


def test_ray_missing_names_the_install(runner, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what Python does when the package is absent
    line = _one_line_error(
        invoke(runner, "sweep", "--models", "se_resnet", "--targets", "sm_89", "-o", tmp_path / "out")
    )
    assert "Ray is not installed" in line and "pip install 'edgepipe[ray]'" in line
    assert "pip install 'edgepipe[ray]'" in _one_line_error(invoke(runner, "worker", "--address", "10.0.0.1:6379"))
    assert not (tmp_path / "out").exists()
