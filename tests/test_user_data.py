"""The user's own images through validate, calibrate, bench and run --onnx, on ONNX models edgepipe did not write.

The models are exported here from torch modules outside the zoo (tests/foreign_models.py), without
edgepipe metadata: an SE classifier at 3x224x224, the same with dynamic H/W and an NHWC input, a
two-output model and a CRNN-like text recognizer. The data is made here too: an ImageFolder of 10
classes whose sorted folder names are not the model's order (mapped through a labels file), and a
flat folder of unlabelled images.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import one_line_error
from foreign_models import NUM_CLASSES, foreign_model
from PIL import Image

import calibration
from pipeline import quantize, run, validate
from pipeline.artifacts import read_manifest, sha256_file
from pipeline.cli import main
from pipeline.commands.build import build_engine_main
from pipeline.errors import EdgepipeError
from pipeline.images import ModelInput, PreprocessFlags, Record, kinds
from pipeline.preprocess import Preprocess
from pipeline.runtime.ort import OnnxRuntimeRunner
from pipeline.tensorrt import backend

CLASSES = [f"class{i}" for i in range(NUM_CLASSES)]  # sorted: class0, class1, ...
MODEL_ORDER = list(reversed(CLASSES))  # the model's output order, as its labels file lists it
TIMM = ("--resize", "256", "--crop", "224", "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225")


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _jpeg(rng, folder: Path, name: str, size=(64, 48)) -> None:
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / name, quality=90)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """(ImageFolder of 10 classes x 10 JPEGs, labels file in the model's order, flat folder of 100 JPEGs)."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (root / "photos" / name).mkdir(parents=True)
        for i in range(10):
            _jpeg(rng, root / "photos" / name, f"{i}.jpg", size=(64 + i, 48))
    (root / "flat").mkdir()
    for i in range(100):
        _jpeg(rng, root / "flat", f"frame_{i:03d}.jpg")
    labels = root / "labels.txt"
    labels.write_text("\n".join(MODEL_ORDER) + "\n")
    return root / "photos", labels, root / "flat"


def copy_of(kind: str, folder: Path, name: str | None = None, **options) -> Path:
    path = folder / (name or f"{kind}.onnx")
    shutil.copyfile(foreign_model(kind, **options), path)
    return path


# --- validate -------------------------------------------------------------------------------------


def test_validate_any_onnx_on_an_image_folder_in_one_pass(photos, tmp_path, monkeypatch):
    folder, labels, _ = photos
    reference = copy_of("se_classifier", tmp_path)
    artifact = copy_of("se_classifier", tmp_path, "same.onnx")
    reads, closed = [], []
    read = kinds.FileSource.read
    monkeypatch.setattr(kinds.FileSource, "read", lambda self, index: (reads.append(index), read(self, index))[1])
    close = OnnxRuntimeRunner.close
    monkeypatch.setattr(OnnxRuntimeRunner, "close", lambda self: (closed.append(self), close(self))[1])
    result = cli(
        "validate",
        "--reference",
        reference,
        artifact,
        tmp_path / "missing.onnx",
        "--data",
        folder,
        "--labels",
        labels,
        "--workers",
        0,
        "--json",
    )
    assert result.exit_code == 1, result.output  # the missing artifact is an error row; the others are measured
    report = json.loads(result.stdout)
    ok, missing = report["rows"]
    assert (
        ok["status"] == "ok"
        and ok["agreement"] == 100.0
        and ok["delta"] == 0.0
        and ok["max_abs_diff"] == 0.0
        and ok["passed"]
    )
    assert missing["status"] == "error" and "missing.onnx does not exist" in missing["error"]
    assert (
        report["images"]["which"] == "all"
        and report["reference"]["samples"] == 100
        and report["reference"]["top1"] is not None
    )
    assert "no preprocessing given: images are resized to 224x224 and scaled to [0, 1]" in result.stderr
    assert sorted(reads) == list(range(100))  # each image decoded once, for the reference and every artifact
    assert len(closed) == 2  # the reference's runner and the artifact's


def test_validate_batch_size_changes_memory_not_figures(photos, tmp_path):
    folder, labels, _ = photos
    reference = copy_of("se_classifier", tmp_path)
    fp16 = tmp_path / "fp16.onnx"
    assert cli("quantize", reference, "--fp16", "-o", fp16).exit_code == 0
    reports = []
    for batch in ("64", "7"):
        result = cli(
            "validate",
            "--reference",
            reference,
            fp16,
            "--data",
            folder,
            "--labels",
            labels,
            "--workers",
            0,
            "--batch-size",
            batch,
            "--json",
        )
        assert result.exit_code == 0, result.output
        reports.append(json.loads(result.stdout))
    (first,), (second,) = reports[0]["rows"], reports[1]["rows"]
    assert (
        second["agreement"] == first["agreement"]
        and second["top1"] == first["top1"]
        and reports[1]["reference"]["samples"] == 100
    )
    assert second["max_abs_diff"] == pytest.approx(first["max_abs_diff"], rel=1e-3)
    assert cli("validate", "--reference", reference, fp16, "--data", folder, "--batch-size", "0").exit_code == 2


def test_validate_dynamic_nhwc_two_outputs_and_a_sequence_model(photos, tmp_path):
    folder, labels, flat = photos
    dynamic = copy_of("se_classifier", tmp_path, "dynamic.onnx", nhwc=True, dynamic_hw=True)
    result = validate.validate(
        dynamic,
        [dynamic],
        data=str(folder),
        labels=labels,
        workers=0,
        preprocess=PreprocessFlags.parse(resize="160", crop="128", mean="0.485,0.456,0.406", std="0.229,0.224,0.225"),
    )
    assert result["preprocess"]["sample_shape"] == [128, 128, 3] and result["preprocess"]["layout"] == "nhwc"
    assert result["rows"][0]["status"] == "ok" and result["rows"][0]["top1"] == result["reference"]["top1"]
    two = copy_of("two_output", tmp_path)
    result = validate.validate(two, [two], data=str(flat), workers=0)
    assert set(result["rows"][0]["outputs"]) == {"logits", "embedding"} and result["reference"]["top1"] is None
    text = copy_of("text_recognizer", tmp_path)
    result = validate.validate(text, [text], data=str(folder), labels=labels, workers=0)
    assert (
        result["rows"][0]["agreement"] == 100.0
        and result["rows"][0]["outputs"]["char_logits"]["argmax_positions"] == 100 * 32
    )
    assert result["reference"]["top1"] is None and "not N x classes" in result["notes"][0]


def test_validate_needs_data_and_the_flags_merge_over_what_a_model_records(photos, tmp_path):
    reference = copy_of("se_classifier", tmp_path)
    with pytest.raises(EdgepipeError, match="records no data, so there are no images to calibrate or validate"):
        validate.validate(reference, [reference])
    model = onnx.load(str(reference))
    Record(Preprocess.from_dict({"resize": 300, "crop": 224})).store_in(model)
    onnx.save(model, str(tmp_path / "ours.onnx"))
    flags = PreprocessFlags.parse(resize="256")
    result = validate.validate(
        tmp_path / "ours.onnx",
        [tmp_path / "ours.onnx"],
        data=str(photos[0]),
        labels=photos[1],
        preprocess=flags,
        workers=0,
    )
    assert result["preprocess"]["origin"] == "stored, then given"
    assert result["preprocess"]["preprocess"]["resize"] == 256 and result["preprocess"]["preprocess"]["crop"] == [
        224,
        224,
    ]


# --- calibrate, then quantize and validate on the held-out rest ----------------------------------


def test_calibrate_from_the_pool_quantize_and_validate_on_the_held_out_rest(photos, tmp_path):
    folder, labels, _ = photos
    model = copy_of("se_classifier", tmp_path)
    calib = tmp_path / "calib.npz"
    result = cli(
        "calibrate",
        "--checkpoint",
        model,
        "--data",
        folder,
        "--labels",
        labels,
        *TIMM,
        "--num",
        80,
        "-o",
        calib,
        "--json",
    )
    assert result.exit_code == 0, result.output
    drawn = calibration.load(calib)
    manifest = read_manifest(calib)
    assert drawn.images.shape == (80, 3, 224, 224) and np.bincount(drawn.labels).tolist() == [8] * 10
    assert (
        manifest["params"]["split"] == "pool"
        and manifest["preprocess"]["crop"] == [224, 224]
        and manifest["split"]["counts"] == {"pool": 80, "held_out": 20}
    )
    source = kinds.FileSource.from_folder(folder.resolve(), MODEL_ORDER, str(labels))
    held_out = source.redraw(manifest["split"]).held_out
    assert not set(drawn.manifest["indices"]) & set(held_out.tolist())  # never a held-out image
    expected = source.batches(
        Preprocess.from_dict({"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}),
        drawn.manifest["indices"][:4],
        workers=0,
    ).collect()[0]
    np.testing.assert_array_equal(drawn.images[:4], expected)

    int8 = tmp_path / "model.int8.onnx"
    quantize.to_int8(model, int8, calib=calib)
    report = validate.validate(
        model,
        [int8],
        data=str(folder),
        labels=labels,
        workers=0,
        preprocess=PreprocessFlags.parse(**dict(zip(("resize", "crop", "mean", "std"), TIMM[1::2]))),
    )
    assert (
        report["images"]["which"] == "held-out" and report["reference"]["samples"] == 20
    )  # found from the INT8 model's calibration set
    assert report["rows"][0]["status"] == "ok" and report["rows"][0]["agreement"] >= 90.0


def test_calibrate_unlabelled_folder_gives_a_set_without_labels(photos, tmp_path):
    model = copy_of("text_recognizer", tmp_path)
    calib = tmp_path / "calib.npz"
    result = cli("calibrate", "--checkpoint", model, "--data", photos[2], "--num", 64, "-o", calib)
    assert result.exit_code == 0, result.output
    assert "unlabelled" in result.stdout and "20 images held out" in result.stdout
    drawn = calibration.load(calib)
    assert drawn.labels is None and drawn.images.shape == (64, 1, 32, 128)
    assert quantize.calibration_sha256(calib) == drawn.sha256


@pytest.mark.skipif("tensorrt-rtx" not in backend.installed_backends(), reason="TensorRT-RTX is not installed")
def test_build_engine_int8_takes_a_set_drawn_from_a_flat_folder(photos, tmp_path):
    model = copy_of("text_recognizer", tmp_path)
    calib = tmp_path / "calib.npz"
    assert cli("calibrate", "--checkpoint", model, "--data", photos[2], "--num", 64, "-o", calib).exit_code == 0
    result = CliRunner().invoke(
        build_engine_main,
        [str(model), "--int8", "--calib", str(calib), "--computeCapability", "8.9", "--json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "text_recognizer.int8.onnx").is_file() and read_manifest(tmp_path / "text_recognizer.int8.onnx")[
        "calibration"
    ]["count"] == 64


def test_quantize_fp16_and_int8_on_an_image_folder_store_the_preprocessing(photos, tmp_path):
    folder, labels, _ = photos
    model = copy_of("se_classifier", tmp_path, "classifier.onnx", opset=12)
    fp16 = tmp_path / "classifier.fp16.onnx"
    result = cli(
        "quantize", model, "--fp16", "--data", folder, "--labels", labels, *TIMM, "--workers", 0, "-o", fp16, "--json"
    )
    assert result.exit_code == 0, result.output
    checked = json.loads(result.stdout)
    assert (
        checked["check"]["on"] == "data"
        and checked["check"]["images"] == 20
        and checked["check"]["split"]["counts"] == {"pool": 80, "held_out": 20}
    )
    assert checked["top1"] is not None and checked["agreement"] >= 99.0 and checked["samples"] == 20
    stored = Preprocess.from_onnx(onnx.load(str(fp16)))  # later stages read the images the same way with no flags
    assert stored.crop == (224, 224) and stored.mean == pytest.approx((0.485, 0.456, 0.406))
    assert read_manifest(fp16)["params"]["preprocess"]["resize"] == 256

    int8 = tmp_path / "classifier.int8.onnx"
    result = cli(
        "quantize",
        model,
        "--int8",
        "--data",
        folder,
        "--labels",
        labels,
        *TIMM,
        "--workers",
        0,
        "--min-agreement",
        "50",
        "-o",
        int8,
        "--json",
    )
    assert result.exit_code == 0, result.output
    checked = json.loads(result.stdout)
    assert (
        checked["calibration"]["count"] == 80
        and "drawn from the calibration pool of photos" in checked["calibration"]["source"]
    )
    assert checked["check"]["text"] == "20 held-out images of photos" and checked["agreement"] >= 50.0
    report = validate.validate(
        model, [int8], data=str(folder), labels=labels, workers=0
    )  # preprocessing read from the INT8 model
    assert report["rows"][0]["status"] == "ok" and report["images"]["which"] == "held-out"


def test_folder_flags_need_a_folder(photos, tmp_path):
    folder, labels, _ = photos
    model = copy_of("text_recognizer", tmp_path)
    one_line_error(
        cli("quantize", model, "--fp16", "--resize", "64", "-o", tmp_path / "r.onnx"),
        "describe a folder of images (--data or --calib)",
    )
    lines = tmp_path / "lines.npz"
    np.savez(lines, inputs=np.zeros((8, 1, 32, 128), np.float32))
    one_line_error(
        cli("quantize", model, "--fp16", "--data", lines, "--resize", "64", "-o", tmp_path / "r.onnx"),
        "the preprocessing flags apply to pixels",
        "already preprocessed",
    )
    one_line_error(cli("build", model, "--fp16", "--labels", labels), "describe a folder of images (--data or --calib)")
    assert not list(tmp_path.glob("r*.onnx")) and not list(tmp_path.glob("*.engine"))


def test_int8_calibrates_on_a_folder_given_as_calib(photos, tmp_path):
    model = copy_of("text_recognizer", tmp_path)
    int8 = tmp_path / "r.int8.onnx"
    result = cli("quantize", model, "--int8", "--calib", photos[2], "--workers", 0, "-o", int8, "--json")
    assert result.exit_code == 0, result.output
    checked = json.loads(result.stdout)
    assert checked["calibration"]["count"] == 100 and checked["calibration"]["source"] == str(photos[2])
    assert checked["calibration"]["sha256"] == quantize.calibration_sha256(photos[2])
    assert (
        checked["check"]["text"] == "the 100 calibration images from flat"
        and checked["check"]["hint"] == "pass --data for held-out images"
    )


@pytest.mark.skipif("tensorrt-rtx" not in backend.installed_backends(), reason="TensorRT-RTX is not installed")
def test_build_engine_int8_calibrates_on_a_flat_folder_and_reuses_it(photos, tmp_path):
    model = copy_of("text_recognizer", tmp_path)
    args = [str(model), "--int8", "--data", str(photos[2]), "--workers", "0", "--computeCapability", "8.9", "--json"]
    result = CliRunner().invoke(build_engine_main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "text_recognizer.int8.onnx")
    assert manifest["calibration"]["count"] == 80 and manifest["check"]["text"] == "20 held-out images of flat"
    made = {path: (path.stat().st_mtime_ns, sha256_file(path)) for path in tmp_path.glob("text_recognizer.int8.*")}
    again = CliRunner().invoke(build_engine_main, args, catch_exceptions=False)
    assert again.exit_code == 0 and json.loads(again.stdout)["cached"] is True, again.output
    assert "reusing" in again.stderr and "already exists" not in again.stderr
    assert {path: (path.stat().st_mtime_ns, sha256_file(path)) for path in made} == made  # nothing rewritten
    changed = CliRunner().invoke(build_engine_main, [*args, "--mean", "0.5"], catch_exceptions=False)
    assert changed.exit_code == 1 and "exists but" in changed.stderr  # other preprocessing: not reused silently
    assert set(tmp_path.glob("text_recognizer.int8.*")) == set(made)  # refused before converting anything


@pytest.mark.skipif("tensorrt-rtx" not in backend.installed_backends(), reason="TensorRT-RTX is not installed")
def test_build_engine_int8_keeps_the_users_own_int8_onnx_and_redoes_its_own_for_other_data(photos, tmp_path):
    model = copy_of("text_recognizer", tmp_path)
    users = tmp_path / "text_recognizer.int8.onnx"  # edgepipe quantize with other settings, as README's examples run
    quantize.convert("int8", model, users, data=str(photos[2]), workers=0, method="max")
    kept = sha256_file(users)
    args = [str(model), "--int8", "--data", str(photos[2]), "--workers", "0", "--computeCapability", "8.9", "--json"]
    first = CliRunner().invoke(build_engine_main, args, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    own = Path(json.loads(first.stdout)["network_onnx"])
    assert own.parent == tmp_path and own.name.startswith("text_recognizer.int8.") and own != users
    assert f"keeping {users}" in first.stderr and sha256_file(users) == kept
    again = CliRunner().invoke(build_engine_main, args, catch_exceptions=False)
    assert again.exit_code == 0 and json.loads(again.stdout)["cached"] is True, again.output
    other = tmp_path / "other"  # the same images under another folder: other data, so a new INT8 ONNX and engine
    shutil.copytree(photos[2], other)
    redo = [*args[:3], str(other), *args[4:], "--force"]
    changed = CliRunner().invoke(build_engine_main, redo, catch_exceptions=False)
    assert changed.exit_code == 0 and json.loads(changed.stdout)["cached"] is False, changed.output
    assert read_manifest(json.loads(changed.stdout)["network_onnx"])["params"]["data"] == str(other)
    assert Path(json.loads(changed.stdout)["network_onnx"]) not in (own, users) and sha256_file(users) == kept


# --- bench ----------------------------------------------------------------------------------------


def test_bench_a_dynamic_model_at_input_size_or_its_stored_size(tmp_path):
    dynamic = copy_of("se_classifier", tmp_path, "dynamic.onnx", dynamic_hw=True)
    result = cli("bench", dynamic, "--iterations", 2, "--warmup-ms", 0, "--json")
    assert result.exit_code == 1 and "pass --input-size HxW" in json.loads(result.stdout)["rows"][0]["reason"]
    result = cli("bench", dynamic, "--input-size", "96x128", "--iterations", 2, "--warmup-ms", 0, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["rows"][0]["status"] == "ok", result.output
    stored = ModelInput.of_onnx(dynamic, PreprocessFlags.parse(resize="80x112")).write_onnx(
        dynamic, tmp_path / "stored.onnx"
    )
    result = cli("bench", stored, "--iterations", 2, "--warmup-ms", 0, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["rows"][0]["status"] == "ok", result.output


# --- run --onnx -----------------------------------------------------------------------------------


def test_run_from_any_onnx_with_the_users_images(photos, tmp_path):
    folder, labels, _ = photos
    model = copy_of("se_classifier", tmp_path, "classifier.onnx", nhwc=True, dynamic_hw=True)
    out = tmp_path / "run"
    flags = PreprocessFlags.parse(resize="160", crop="128", mean="0.485,0.456,0.406", std="0.229,0.224,0.225")
    report = run.run(
        onnx_model=model,
        data=str(folder),
        labels=labels,
        preprocess=flags,
        workers=0,
        output=out,
        engines=False,
        bench_batches=(1,),
        bench_seconds=0.1,
    )
    assert {name: s["status"] for name, s in report["stages"].items()} == dict.fromkeys(
        ("import", "calibrate", "quantize-int8", "quantize-fp16", "validate", "bench"), "done"
    ), report["stages"]
    stored = Preprocess.from_onnx(onnx.load(str(out / "model.onnx")))
    assert stored.crop == (128, 128) and stored.layout == "nhwc"
    for name in ("model.fp16.onnx", "model.int8.onnx"):  # converted models carry it over: later stages need no flags
        assert Preprocess.from_onnx(onnx.load(str(out / name))) == stored
    assert report["model"] == "classifier.onnx" and (out / "report.md").read_text().startswith(
        "# edgepipe run: classifier.onnx on photos\n"
    )
    validated = json.loads((out / "validate.json").read_text())
    assert validated["images"]["which"] == "held-out" and validated["reference"]["samples"] == 20
    assert all(row["status"] == "ok" for row in report["rows"])
    again = run.run(
        onnx_model=model,
        data=str(folder),
        labels=labels,
        preprocess=flags,
        workers=0,
        output=out,
        engines=False,
        bench_batches=(1,),
        bench_seconds=0.1,
    )
    assert {s["status"] for s in again["stages"].values()} == {"reused"}


# --- bad input: one line, non-zero exit, nothing half-written -----------------------------------------


@pytest.mark.parametrize(
    "flags, needles",
    [
        (("--resize", "200", "--crop", "224"), ["crop 224x224 is larger than resize 200"]),
        (("--mean", "0.5,0.5"), ["mean has 2 values"]),
        (("--std", "0.5"), ["std has 1 value but the model's input has 3 channels"]),
        (("--labels", "FEW"), ["has 3 names, fewer than the model's 10 classes"]),
        (
            ("--labels", "MISSING"),
            ["class folders class1, class2 are not in labels file", "did you mean class1 -> klass1, class2 -> klass2?"],
        ),
    ],
)
def test_bad_preprocessing_and_labels_write_nothing(photos, tmp_path, flags, needles):
    folder = photos[0]
    (tmp_path / "FEW").write_text("a\nb\nc\n")
    (tmp_path / "MISSING").write_text("\n".join(["class0", "klass1", "klass2", *CLASSES[3:]]) + "\n")
    flags = tuple(str(tmp_path / f) if f in ("FEW", "MISSING") else f for f in flags)
    model = copy_of("se_classifier", tmp_path)
    one_line_error(
        cli("calibrate", "--checkpoint", model, "--data", folder, *flags, "-o", tmp_path / "calib.npz"), *needles
    )
    one_line_error(
        cli("run", "--onnx", model, "--data", folder, *flags, "-o", tmp_path / "run", "--no-engines"), *needles
    )
    assert not (tmp_path / "calib.npz").exists() and not (tmp_path / "run").exists()


def test_unlabelled_data_with_max_drop_and_several_inputs(photos, tmp_path):
    model = copy_of("se_classifier", tmp_path)
    one_line_error(
        cli("run", "--onnx", model, "--data", photos[2], "--max-drop", "0.5", "-o", tmp_path / "run"),
        "--max-drop needs labelled images",
    )
    assert not (tmp_path / "run").exists()
    two = copy_of("two_input", tmp_path)
    one_line_error(
        cli("validate", "--reference", two, two, "--data", photos[2]),
        "the model has 2 inputs: 'image'",
        "'class_prior'",
    )


def test_an_image_that_does_not_decode_in_a_big_folder_is_named(tmp_path):
    folder = tmp_path / "lines"
    folder.mkdir()
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 128), dtype=np.uint8)).save(buffer, format="PNG")
    for i in range(2_000):
        (folder / f"line_{i:05d}.png").write_bytes(buffer.getvalue())
    (folder / "line_01234.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    model = copy_of("text_recognizer", tmp_path)
    one_line_error(
        cli("validate", "--reference", model, model, "--data", folder), "line_01234.png is not a readable image"
    )
    one_line_error(
        cli("calibrate", "--checkpoint", model, "--data", folder, "--num", 2_000, "-o", tmp_path / "calib.npz"),
        "line_01234.png",
    )
    assert not list(tmp_path.glob("calib.npz*")) and not list(tmp_path.glob(".calib.npz*"))


def test_run_from_any_onnx_redoes_only_the_data_stages_for_other_data(photos, tmp_path):
    folder, labels, _ = photos
    model = copy_of("se_classifier", tmp_path, "classifier.onnx")
    other = tmp_path / "more_photos"
    shutil.copytree(folder, other)
    _jpeg(np.random.default_rng(1), other / "class0", "extra.jpg")
    settings = dict(onnx_model=model, labels=labels, workers=0, output=tmp_path / "run", engines=False, max_drop=None)
    settings.update(precisions=("fp32", "int8"), bench_batches=(1,), bench_seconds=0.05)
    first = run.run(data=str(folder), **settings)
    assert {s["status"] for s in first["stages"].values()} == {"done"}, first["stages"]
    imported = sha256_file(tmp_path / "run" / "model.onnx")
    again = run.run(data=str(other), **settings)
    statuses = {name: s["status"] for name, s in again["stages"].items() if name != "bench"}  # by the INT8 bytes
    assert statuses == {
        "import": "reused",  # it stores the preprocessing and class names, which --data does not change
        "calibrate": "done",
        "quantize-int8": "done",
        "validate": "done",
    }, statuses
    assert sha256_file(tmp_path / "run" / "model.onnx") == imported
    assert Record.of_onnx(onnx.load(str(tmp_path / "run" / "model.onnx"))).class_names == tuple(MODEL_ORDER)
    assert json.loads((tmp_path / "run" / "validate.json").read_text())["images"]["count"] < 101
