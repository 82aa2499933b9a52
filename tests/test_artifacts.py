"""Artifacts: files follow the user's umask, the one reuse rule says why a file is stale, Artifact reads facts once."""

from __future__ import annotations

import os
import stat

import pytest

from pipeline.artifacts import Artifact, Kind, why_stale, write_json_atomic, write_manifest
from pipeline.errors import EdgepipeError
from pipeline.precision import Precision


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_written_files_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        path = tmp_path / "report.json"
        write_json_atomic(path, {"a": 1})
        manifest = write_manifest(path, Kind.RESULT, inputs={}, params={})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE((tmp_path / "report.json.manifest.json").stat().st_mode) == 0o666 & ~mask
    assert manifest["kind"] == "result"


def test_reuse_rule_names_what_changed(tmp_path):
    path = tmp_path / "model.fp16.onnx"
    path.write_bytes(b"not really onnx")
    assert why_stale(path, Kind.ONNX, {"onnx": "a"}, {"precision": "fp16"}).startswith("has no edgepipe manifest")
    write_manifest(path, Kind.ONNX, inputs={"onnx": "a"}, params={"precision": "fp16"}, precision=Precision.FP16)
    assert why_stale(path, Kind.ONNX, {"onnx": "a"}, {"precision": "fp16"}) is None
    assert Artifact.open(path).precision is Precision.FP16  # what a stage reuses, read from its manifest
    assert (
        why_stale(path, Kind.ONNX, {"onnx": "b"}, {"precision": "fp16"})
        == "was made from other inputs: another ONNX model"
    )
    assert "precision fp16 (now int8)" in why_stale(path, Kind.ONNX, {"onnx": "a"}, {"precision": "int8"})
    path.write_bytes(b"replaced")
    assert why_stale(path, Kind.ONNX, {"onnx": "a"}, {"precision": "fp16"}).startswith("changed since it was made")


def test_artifact_open_reads_kind_and_precision_from_the_manifest(tmp_path):
    engine = tmp_path / "model.int8.engine"
    engine.write_bytes(b"engine bytes")
    write_manifest(engine, Kind.ENGINE, inputs={}, params={}, precision=Precision.INT8, backend="tensorrt-rtx")
    artifact = Artifact.open(engine)
    assert (artifact.kind, artifact.precision, artifact.backend) == (Kind.ENGINE, Precision.INT8, "tensorrt-rtx")
    with pytest.raises(EdgepipeError, match="cannot tell what .* is from its suffix"):
        Artifact.open(tmp_path.joinpath("notes.txt").resolve() if (tmp_path / "notes.txt").write_text("x") else None)
