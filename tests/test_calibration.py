"""Calibration sets: balanced draws from the calibration pool only, seeded, saved with a manifest; one road for every model."""

import json

import numpy as np
import pytest
from conftest import invoke

import calibration
from pipeline.artifacts import read_manifest
from pipeline.errors import EdgepipeError


@pytest.fixture(scope="module")
def model_input(trained):
    """What the checkpoint records, as every stage reads it."""
    from pipeline.checkpoint import model_input_of

    return model_input_of(trained[0])


@pytest.fixture(scope="module")
def calib_set(trained):
    return calibration.draw_for(trained[0], num=200, seed=0)


def test_draw_is_class_balanced_and_never_uses_held_out_images(calib_set, trained, model_input):
    from pipeline.images import ModelData

    config = trained[1]
    assert len(calib_set) == 200
    assert set(calib_set.manifest["count_per_class"].values()) == {20}
    assert np.bincount(calib_set.labels).tolist() == [20] * 10
    held_out = ModelData.of(model_input).split.held_out
    assert len(held_out) == 359 and not set(calib_set.manifest["indices"]) & set(held_out.tolist())
    assert calib_set.manifest["split"] == config["split"]
    assert calib_set.images.dtype == np.float32 and calib_set.images.shape == (200, *config["input_shape"])
    # normalized with the model's mean/std: the set's mean is near 0
    assert abs(float(calib_set.images.mean())) < 0.3


def test_draw_is_deterministic_by_seed(calib_set, trained, exported):
    again = calibration.draw_for(exported, num=200, seed=0)  # the export records what the checkpoint records
    other = calibration.draw_for(trained[0], num=200, seed=1)
    assert np.array_equal(again.images, calib_set.images) and again.sha256 == calib_set.sha256
    assert other.manifest["indices"] != calib_set.manifest["indices"]


def test_save_load_round_trip_and_manifest(calib_set, trained, model_input, tmp_path):
    config = trained[1]
    path = calibration.save(tmp_path / "calib.npz", calib_set)
    loaded = calibration.load(path)
    assert np.array_equal(loaded.images, calib_set.images) and np.array_equal(loaded.labels, calib_set.labels)
    calibration.check_matches(loaded, model_input)
    manifest = read_manifest(path)
    assert manifest["kind"] == "calibration" and manifest["count"] == 200
    assert manifest["inputs"]["model"] == read_manifest(trained[0])["sha256"]
    assert manifest["preprocess"] == config["preprocess"] and manifest["input_shape"] == config["input_shape"]
    assert manifest["shapes"]["images"] == [200, *config["input_shape"]]
    with pytest.raises(EdgepipeError, match="already exists"):
        calibration.save(path, calib_set)


def test_batches_are_contiguous_and_pad_the_last(calib_set):
    got = list(calibration.batches(calib_set, 64))
    assert [len(b) for b in got] == [64, 64, 64, 64]
    assert all(b.flags["C_CONTIGUOUS"] and b.dtype == np.float32 for b in got)
    assert np.array_equal(got[3][:8], calib_set.images[192:])


def test_mismatched_shape_or_preprocessing_is_refused(calib_set, model_input):
    with pytest.raises(EdgepipeError, match="the model takes 1x32x32"):
        calibration.check_matches(
            calibration.CalibrationSet(calib_set.images[:, :, :16, :16].copy(), calib_set.labels, calib_set.manifest),
            model_input,
        )
    other = dict(calib_set.manifest, preprocess={**calib_set.manifest["preprocess"], "mean": [0.5]})
    with pytest.raises(EdgepipeError, match="normalized with mean 0.5"):
        calibration.check_matches(calibration.CalibrationSet(calib_set.images, calib_set.labels, other), model_input)
    older = {k: v for k, v in calib_set.manifest.items() if k != "preprocess"}
    with pytest.raises(EdgepipeError, match="made by an older edgepipe"):
        calibration.check_matches(calibration.CalibrationSet(calib_set.images, calib_set.labels, older), model_input)


def test_too_few_images_are_refused(calib_set, trained, model_input):
    with pytest.raises(EdgepipeError, match="minimum 80"):
        calibration.draw_for(trained[0], num=20)
    small = calibration.CalibrationSet(calib_set.images[:30], calib_set.labels[:30], calib_set.manifest)
    with pytest.raises(EdgepipeError, match="at least 80"):
        calibration.check_matches(small, model_input)


def test_nan_and_corrupt_files_are_refused(calib_set, tmp_path):
    bad = calibration.CalibrationSet(calib_set.images.copy(), calib_set.labels, calib_set.manifest)
    bad.images[3, 0, 0, 0] = np.nan
    calibration.save(tmp_path / "nan.npz", bad)
    with pytest.raises(EdgepipeError, match="NaN or Inf values in 1 image"):
        calibration.load(tmp_path / "nan.npz")
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(EdgepipeError, match="not a readable .npz"):
        calibration.load(tmp_path / "corrupt.npz")
    np.savez(tmp_path / "plain.npz", x=np.zeros((4, 1, 32, 32)), y=np.zeros(4, dtype=int))
    with pytest.raises(EdgepipeError, match="not an edgepipe calibration set"):
        calibration.load(tmp_path / "plain.npz")


def test_calibrate_cli_from_onnx_metadata(runner, exported, trained, tmp_path):
    out = tmp_path / "calib.npz"
    result = invoke(runner, "calibrate", "--checkpoint", exported, "--num", 100, "--seed", 3, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["count"] == 100 and set(report["count_per_class"].values()) == {10}
    assert calibration.load(out).manifest["split"] == trained[1]["split"]
    again = invoke(runner, "calibrate", "--checkpoint", exported, "-o", out)
    assert again.exit_code == 1 and "already exists" in again.stderr
    few = invoke(runner, "calibrate", "--checkpoint", trained[0], "--num", 10, "-o", tmp_path / "few.npz")
    assert few.exit_code == 1 and "Fix:" in few.stderr and not (tmp_path / "few.npz").exists()


def test_calibrate_cli_prints_a_checkpoint_s_draw_in_human_output(runner, trained, tmp_path):
    out = tmp_path / "calib.npz"
    result = invoke(runner, "calibrate", "--checkpoint", trained[0], "--num", 100, "-o", out)
    assert result.exit_code == 0, result.output
    assert (
        "100 images from the calibration pool of digits (10-10 per class), seed 0; 359 images held out" in result.stdout
    )
