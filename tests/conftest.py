"""Shared fixtures: one trained checkpoint and its ONNX export, made once per test session.

They are real: the default zoo model trained on the bundled digits with its default recipe,
exported with the TorchScript exporter and checked against PyTorch with ONNX Runtime.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 2))


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """(checkpoint path, config) of se_resnet trained on digits with its default recipe."""
    from pipeline import train
    from pipeline.checkpoint import save_checkpoint

    folder = tmp_path_factory.mktemp("trained")
    model, config = train.train("se_resnet", data="digits", seed=0, progress=False)
    path = save_checkpoint(folder / "se_resnet.pt", model, config)
    return path, config


@pytest.fixture(scope="session")
def exported(trained, tmp_path_factory):
    """Path of the trained model exported to ONNX with a dynamic batch."""
    from pipeline import export

    path = tmp_path_factory.mktemp("exported") / "model.onnx"
    export.export(trained[0], path, dynamic_batch=True)
    return path


@pytest.fixture(scope="session")
def engine(exported, tmp_path_factory):
    """A real engine built from the exported model (TensorRT-RTX builds it on the CPU), batch 1-32."""
    from pipeline import build, cuda
    from pipeline.tensorrt import backend

    if not backend.installed_backends():
        pytest.skip("no TensorRT or TensorRT-RTX installed")
    chosen = backend.get_backend()
    no_gpu = cuda.current_compute_capability() is None
    targets = ["8.9"] if chosen.name == backend.TENSORRT_RTX and no_gpu else None
    path = tmp_path_factory.mktemp("engine") / "model.engine"
    shapes = {"min": "input:1x1x32x32", "opt": "input:8x1x32x32", "max": "input:32x1x32x32"}
    build.build_engine(exported, save_engine=path, shapes=shapes, compute_capability=targets, force=True)
    return path


@pytest.fixture()
def runner():
    """Click's CliRunner for the edgepipe group, with stderr kept apart from stdout."""
    from click.testing import CliRunner

    return CliRunner()


def invoke(runner, *args):
    from pipeline.cli import main

    return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result, *needles) -> str:
    """A command that failed as bad input must: exit 1, one "Error:" line naming every needle, no traceback; the line."""
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def compare_logits(reference, logits) -> dict:
    """The one comparison edgepipe makes (pipeline.fidelity) of two arrays of logits."""
    from pipeline.fidelity import Fidelity

    fidelity = Fidelity(["logits"])
    fidelity.update([reference], [logits])
    return fidelity.result()
