"""Calibration sets: class-balanced, seeded draws from a model's training split, with its preprocessing.

A calibration set is what INT8 calibration sees of the world: images preprocessed exactly as the
model expects them, drawn only from the training split (never the held-out images the artifacts
are judged on), with the same number of images per class. It is saved as an .npz (images, labels
and a JSON description) with a manifest beside it, and fed to ModelOpt as one array and to a
TensorRT calibrator batch by batch (``batches``).

    calib_set = calibration.draw(config, num=512, seed=0)                   # an edgepipe model
    calib_set = calibration.draw_from_images("model.onnx", "photos/", num=512, labels="labels.txt")  # any ONNX
    calibration.save("calib.npz", calib_set)
    calib_set = calibration.load("calib.npz")
    calibration.check_matches(calib_set, config)

For a model edgepipe did not export (``draw_from_images``) the images come from the calibration
pool of the user's data: a seeded split (``ImageSource.split``) keeps the held-out part, which
validate judges on, out of it, and the set's manifest records that split and the preprocessing.
Unlabelled data gives a set without labels.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import data as datamod
from pipeline.artifacts import atomic_output, check_output, sha256_file, write_manifest
from pipeline.checkpoint import config_of
from pipeline.defaults import DEFAULT_CALIBRATION_SIZE
from pipeline.errors import EdgepipeError
from pipeline.images import SPLIT_SEED, VAL_FRACTION, ModelInput, PreprocessFlags, open_source, refuse_for_recorded
from pipeline.onnxfile import CONFIG_KEY, load_onnx, read_metadata
from pipeline.progress import info

DEFAULT_NUM = DEFAULT_CALIBRATION_SIZE
# Why these minimums: entropy (KL) calibration picks each tensor's clipping threshold from a
# histogram of its activations, and max calibration takes the largest value seen. Both are
# statistics of the rarest patterns, which differ per class: with fewer than ~8 images of a class
# its activations are not represented and the chosen ranges move noticeably from seed to seed.
# Below 64 images in all, thresholds of the late, low-resolution layers (4x4 maps) rest on too
# few values for a stable histogram. So: at least 8 per class and at least 64 in all.
MIN_PER_CLASS = 8
MIN_TOTAL = 64
# Normalization constants are stored as float lists; equal within this tolerance means the same.
_PREPROCESSING_RTOL = 1e-5
_FORMAT = 1


@dataclass
class CalibrationSet:
    images: (
        np.ndarray
    )  # float32, one preprocessed image per row, in the model's layout (N x C x H x W for edgepipe's models)
    labels: np.ndarray | None  # int64 N, or None for unlabelled images
    manifest: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def sha256(self) -> str:
        return self.manifest.get("sha256") or content_sha256(self.images, self.labels)


def content_sha256(images: np.ndarray, labels: np.ndarray | None) -> str:
    """sha256 of the images' float32 bytes, then the labels' int64 bytes when there are labels."""
    digest = hashlib.sha256(np.ascontiguousarray(images, dtype=np.float32).tobytes())
    if labels is not None:
        digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


def minimum_count(num_classes: int) -> int:
    """The fewest images a calibration set may hold for a model with ``num_classes`` classes."""
    return max(MIN_TOTAL, MIN_PER_CLASS * num_classes)


def draw(config: dict[str, Any], data: str | None = None, num: int = DEFAULT_NUM, seed: int = 0) -> CalibrationSet:
    """Draw ``num`` images, balanced over classes, from the training split of ``config``'s data.

    ``data`` overrides the dataset (then all of it counts as training data, see ``split_of``).
    """
    classes = config["class_names"]
    least = minimum_count(len(classes))
    if num < least:
        raise EdgepipeError(
            f"--num {num} is too few calibration images for {len(classes)} classes (minimum {least})",
            fix=f"pass --num {least} or more ({MIN_PER_CLASS} per class, {MIN_TOTAL} in all, keep calibration ranges stable)",
        )
    dataset = datamod.load_for_config(config, data)
    x_train, y_train = datamod.split_of(config, dataset, "train")
    source_indices = _train_indices(config, dataset)
    if len(y_train) < least:
        raise EdgepipeError(
            f"the training split of {dataset.source} has {len(y_train)} images, calibration needs at least {least}",
            fix="pass --data with more images",
        )
    picked = _balanced_positions(y_train, num, seed)
    images = np.ascontiguousarray(x_train[picked], dtype=np.float32)
    labels = y_train[picked].astype(np.int64)
    counts = np.bincount(labels, minlength=len(classes))
    manifest = {
        "format": _FORMAT,
        "source": dataset.source,
        "data_sha256": dataset.sha256,
        "split": "train",
        "seed": seed,
        "requested": num,
        "count": int(len(labels)),
        "count_per_class": {name: int(n) for name, n in zip(classes, counts)},
        "shapes": {"images": list(images.shape), "labels": list(labels.shape)},
        "input_shape": list(config["input_shape"]),
        "mean": [float(m) for m in config["mean"]],
        "std": [float(s) for s in config["std"]],
        "class_names": list(classes),
        "model": config.get("model"),
        "checkpoint_sha256": config.get("checkpoint_sha256"),
        "indices": [int(i) for i in source_indices[picked]],
        "sha256": content_sha256(images, labels),
    }
    return CalibrationSet(images, labels, manifest)


def _train_indices(config: dict[str, Any], dataset: datamod.Dataset) -> np.ndarray:
    """Dataset indices of the rows ``split_of(config, dataset, "train")`` returns, in order."""
    if dataset.sha256 != config["data"]["sha256"]:
        return np.arange(len(dataset))
    mask = np.ones(len(dataset), dtype=bool)
    mask[np.asarray(config["split"]["val_indices"], dtype=np.int64)] = False
    return np.flatnonzero(mask)


def _balanced_positions(labels: np.ndarray, num: int, seed: int) -> np.ndarray:
    """Take images class by class in turns (each class shuffled by ``seed``) until ``num``.

    Every class gets the same share; a class that runs out leaves its turns to the others.
    """
    rng = np.random.default_rng(seed)
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    picked: list[int] = []
    depth = 0
    while len(picked) < num and any(depth < len(pool) for pool in pools):
        for pool in pools:
            if depth < len(pool) and len(picked) < num:
                picked.append(int(pool[depth]))
        depth += 1
    return np.sort(np.asarray(picked, dtype=np.int64))


def draw_for(
    model: str | Path,
    data: str | None = None,
    num: int = DEFAULT_NUM,
    seed: int = 0,
    labels: str | Path | None = None,
    preprocess: PreprocessFlags | None = None,
    workers: int | None = None,
) -> CalibrationSet:
    """A calibration set for any model: an edgepipe checkpoint or export draws from its recorded
    training split (``draw``), any other ONNX from the calibration pool of ``data`` (``draw_from_images``)."""
    if Path(model).suffix.lower() == ".onnx" and CONFIG_KEY not in read_metadata(load_onnx(model)):
        if data is None:
            raise EdgepipeError(
                f"{model} has no edgepipe metadata, so there is no training data to draw calibration images from",
                fix="pass --data with your images (an ImageFolder, a folder of images or an .npz), and --labels FILE if the folders are classes",
            )
        return draw_from_images(model, data, num=num, seed=seed, labels=labels, preprocess=preprocess, workers=workers)
    refuse_for_recorded(model, preprocess, labels)
    return draw(config_of(model), data=data, num=num, seed=seed)


def draw_from_images(
    model: str | Path,
    data: str,
    num: int = DEFAULT_NUM,
    seed: int = 0,
    labels: str | Path | None = None,
    preprocess: PreprocessFlags | None = None,
    workers: int | None = None,
) -> CalibrationSet:
    """Draw ``num`` images from the calibration pool of the user's ``data`` for any ONNX ``model``.

    Class by class in turns when the data is labelled, seeded; never from the held-out part of the
    split (``SPLIT_SEED``), which the manifest records so that validate judges on the rest.
    """
    if num < MIN_TOTAL:
        raise EdgepipeError(
            f"--num {num} is too few calibration images (minimum {MIN_TOTAL})",
            fix=f"pass --num {MIN_TOTAL} or more, to keep calibration ranges stable",
        )
    model_input = ModelInput.of_onnx(model, preprocess)
    info(model_input.describe())
    source = open_source(data, labels=labels, num_classes=model_input.num_classes)
    split = source.split(seed=SPLIT_SEED, val_fraction=VAL_FRACTION)
    if len(split.pool) < MIN_TOTAL:
        raise EdgepipeError(
            f"the calibration pool of {source.spec} has {len(split.pool)} images (the other {len(split.held_out)} are held out for validation); "
            f"calibration needs at least {MIN_TOTAL}",
            fix=f"add images: {int(np.ceil(MIN_TOTAL / (1 - VAL_FRACTION)))} or more in all",
        )
    picked = source.draw(split.pool, num, seed=seed)
    x, y = source.batches(model_input.preprocess, picked, workers=workers, progress="calibrate").collect()
    classes = source.class_names if source.labelled else None
    manifest = {
        "format": _FORMAT,
        "source": source.spec,
        "data_sha256": source.sha256,
        "split": split.record,
        "seed": seed,
        "requested": num,
        "count": int(len(x)),
        "count_per_class": {name: int(n) for name, n in zip(classes, np.bincount(y, minlength=len(classes)))}
        if y is not None
        else None,
        "shapes": {"images": list(x.shape), "labels": list(y.shape) if y is not None else None},
        "input_shape": list(x.shape[1:]),
        "layout": model_input.info.layout,
        "preprocess": model_input.preprocess.to_dict(),
        "mean": list(model_input.preprocess.mean) if model_input.preprocess.mean else None,
        "std": list(model_input.preprocess.std) if model_input.preprocess.std else None,
        "class_names": classes,
        "model": Path(model).name,
        "onnx_sha256": sha256_file(model),
        "indices": [int(i) for i in picked],
        "sha256": content_sha256(x, y),
    }
    return CalibrationSet(x, y, manifest)


def save(path: str | Path, calib_set: CalibrationSet, force: bool = False) -> Path:
    """Write ``calib_set`` as an .npz (atomically) and its manifest beside it."""
    path = check_output(path, force)
    if path.suffix != ".npz":
        raise EdgepipeError(f"calibration output {path} must end in .npz", fix="pass -o NAME.npz")
    manifest = dict(calib_set.manifest)
    manifest.setdefault("sha256", content_sha256(calib_set.images, calib_set.labels))
    arrays = {
        "images": np.ascontiguousarray(calib_set.images, dtype=np.float32),
        "manifest": np.asarray(json.dumps(manifest, sort_keys=True)),
    }
    if calib_set.labels is not None:  # unlabelled images are saved without labels
        arrays["labels"] = calib_set.labels.astype(np.int64)
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a path
            np.savez(f, **arrays)
    foreign = "onnx_sha256" in manifest  # drawn from the user's images for a model edgepipe did not export
    made_from = (
        {"data": manifest.get("data_sha256"), "onnx": manifest["onnx_sha256"]}
        if foreign
        else {"data": manifest.get("data_sha256"), "checkpoint": manifest.get("checkpoint_sha256")}
    )
    params = {"num": manifest.get("requested"), "seed": manifest.get("seed"), "split": "pool" if foreign else "train"}
    extra = ("split", "preprocess", "layout", "class_names") if foreign else ()
    write_manifest(
        path,
        "calibration",
        inputs=made_from,
        params=params,
        **{
            key: manifest.get(key)
            for key in ("source", "count", "count_per_class", "shapes", "input_shape", "mean", "std", "model", *extra)
        },
        content_sha256=manifest["sha256"],
    )
    return path


def load(path: str | Path) -> CalibrationSet:
    """Read a calibration set written by ``save``; clear errors for missing, corrupt or bad data."""
    path = Path(path)
    fix = "make one with 'edgepipe calibrate --checkpoint MODEL -o calib.npz', or drop --calib to draw one from the model's training data"
    if not path.is_file():
        raise EdgepipeError(f"calibration set {path} does not exist", fix=fix)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise EdgepipeError(f"{path} is not a readable .npz ({type(exc).__name__}: {str(exc)[:120]})", fix=fix)
    missing = [key for key in ("images", "manifest") if key not in arrays]
    if missing:
        raise EdgepipeError(
            f"{path} is not an edgepipe calibration set (no {', '.join(missing)}; it has {', '.join(arrays) or 'nothing'})",
            fix=fix,
        )
    try:
        manifest = json.loads(str(arrays["manifest"]))
    except ValueError:
        raise EdgepipeError(f"{path} has an unreadable description", fix=fix)
    images, labels = arrays["images"], arrays.get("labels")  # no labels: drawn from unlabelled images
    if (
        images.ndim != 4
        or images.dtype != np.float32
        or (labels is not None and (labels.ndim != 1 or len(labels) != len(images)))
    ):
        shown = labels.shape if labels is not None else "none"
        raise EdgepipeError(
            f"{path} holds images {images.shape} {images.dtype} and labels {shown}; expected float32 N x C x H x W (or N x H x W x C) and N labels",
            fix=fix,
        )
    if not np.isfinite(images).all():
        bad = int((~np.isfinite(images)).reshape(len(images), -1).any(axis=1).sum())
        raise EdgepipeError(
            f"{path} holds NaN or Inf values in {bad} image(s)",
            fix="clean the source data and draw the set again with 'edgepipe calibrate'",
        )
    return CalibrationSet(np.ascontiguousarray(images), None if labels is None else labels.astype(np.int64), manifest)


def check_matches(calib_set: CalibrationSet, config: dict[str, Any]) -> None:
    """Raise when ``calib_set`` was not made for a model with ``config``'s input and preprocessing."""
    fix = "draw a set for this model with 'edgepipe calibrate --checkpoint MODEL', or drop --calib to draw one from its training data"
    shape = list(calib_set.images.shape[1:])
    if shape != list(config["input_shape"]):
        raise EdgepipeError(
            f"the calibration images are {_dims(shape)} but the model takes {_dims(config['input_shape'])}", fix=fix
        )
    if not np.isfinite(calib_set.images).all():
        raise EdgepipeError(
            "the calibration set holds NaN or Inf values", fix="clean the source data and draw the set again"
        )
    manifest = calib_set.manifest
    for key in ("mean", "std"):
        theirs = manifest.get(key)
        if (
            theirs is None
            or len(theirs) != len(config[key])
            or not np.allclose(theirs, config[key], rtol=_PREPROCESSING_RTOL, atol=1e-7)
        ):
            raise EdgepipeError(
                f"the calibration set was normalized with {key} {_fmt(theirs)}, the model uses {_fmt(config[key])}",
                fix=fix,
            )
    least = minimum_count(len(config["class_names"]))
    if len(calib_set) < least:
        raise EdgepipeError(
            f"the calibration set has {len(calib_set)} images; at least {least} are needed for {len(config['class_names'])} classes",
            fix=f"draw a larger set: 'edgepipe calibrate --num {max(least, DEFAULT_NUM)}'",
        )


def batches(calib_set: CalibrationSet, batch_size: int) -> Iterator[np.ndarray]:
    """Contiguous float32 batches of exactly ``batch_size``; the last is padded by repeating images."""
    if batch_size < 1:
        raise EdgepipeError(
            f"calibration batch size must be at least 1, got {batch_size}", fix="use a batch size of 1 or more"
        )
    images = calib_set.images
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        if len(batch) < batch_size:
            batch = np.resize(batch, (batch_size, *batch.shape[1:]))  # repeats from the batch's start
        yield np.ascontiguousarray(batch, dtype=np.float32)


def _dims(shape) -> str:
    return "x".join(str(d) for d in shape)


def _fmt(values) -> str:
    if values is None:
        return "(not recorded)"
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"
