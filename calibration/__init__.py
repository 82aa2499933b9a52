"""Calibration sets: class-balanced, seeded draws from a model's training split, with its preprocessing.

A calibration set is what INT8 calibration sees of the world: images normalized exactly as the
model expects them, drawn only from the training split (never the held-out images the artifacts
are judged on), with the same number of images per class. It is saved as an .npz (images, labels
and a JSON description) with a manifest beside it, and fed to ModelOpt as one array and to a
TensorRT calibrator batch by batch (``batches``).

    calib_set = calibration.draw(config, num=512, seed=0)
    calibration.save("calib.npz", calib_set)
    calib_set = calibration.load("calib.npz")
    calibration.check_matches(calib_set, config)
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pipeline import data as datamod
from pipeline.artifacts import atomic_output, check_output, write_manifest
from pipeline.errors import EdgepipeError

DEFAULT_NUM = 512
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
    images: np.ndarray  # float32 N x C x H x W, normalized with the model's mean/std
    labels: np.ndarray  # int64 N
    manifest: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def sha256(self) -> str:
        return self.manifest.get("sha256") or content_sha256(self.images, self.labels)


def content_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images, dtype=np.float32).tobytes() + np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()


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


def save(path: str | Path, calib_set: CalibrationSet, force: bool = False) -> Path:
    """Write ``calib_set`` as an .npz (atomically) and its manifest beside it."""
    path = check_output(path, force)
    if path.suffix != ".npz":
        raise EdgepipeError(f"calibration output {path} must end in .npz", fix="pass -o NAME.npz")
    manifest = dict(calib_set.manifest)
    manifest.setdefault("sha256", content_sha256(calib_set.images, calib_set.labels))
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a path
            np.savez(f, images=np.ascontiguousarray(calib_set.images, dtype=np.float32), labels=calib_set.labels.astype(np.int64), manifest=np.asarray(json.dumps(manifest, sort_keys=True)))
    write_manifest(
        path,
        "calibration",
        inputs={"data": manifest.get("data_sha256"), "checkpoint": manifest.get("checkpoint_sha256")},
        params={"num": manifest.get("requested"), "seed": manifest.get("seed"), "split": "train"},
        **{key: manifest.get(key) for key in ("source", "count", "count_per_class", "shapes", "input_shape", "mean", "std", "model")},
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
    missing = [key for key in ("images", "labels", "manifest") if key not in arrays]
    if missing:
        raise EdgepipeError(f"{path} is not an edgepipe calibration set (no {', '.join(missing)}; it has {', '.join(arrays) or 'nothing'})", fix=fix)
    try:
        manifest = json.loads(str(arrays["manifest"]))
    except ValueError:
        raise EdgepipeError(f"{path} has an unreadable description", fix=fix)
    images, labels = arrays["images"], arrays["labels"]
    if images.ndim != 4 or images.dtype != np.float32 or labels.ndim != 1 or len(labels) != len(images):
        raise EdgepipeError(f"{path} holds images {images.shape} {images.dtype} and labels {labels.shape}; expected float32 N x C x H x W and N labels", fix=fix)
    if not np.isfinite(images).all():
        bad = int((~np.isfinite(images)).reshape(len(images), -1).any(axis=1).sum())
        raise EdgepipeError(f"{path} holds NaN or Inf values in {bad} image(s)", fix="clean the source data and draw the set again with 'edgepipe calibrate'")
    return CalibrationSet(np.ascontiguousarray(images), labels.astype(np.int64), manifest)


def check_matches(calib_set: CalibrationSet, config: dict[str, Any]) -> None:
    """Raise when ``calib_set`` was not made for a model with ``config``'s input and preprocessing."""
    fix = "draw a set for this model with 'edgepipe calibrate --checkpoint MODEL', or drop --calib to draw one from its training data"
    shape = list(calib_set.images.shape[1:])
    if shape != list(config["input_shape"]):
        raise EdgepipeError(f"the calibration images are {_dims(shape)} but the model takes {_dims(config['input_shape'])}", fix=fix)
    if not np.isfinite(calib_set.images).all():
        raise EdgepipeError("the calibration set holds NaN or Inf values", fix="clean the source data and draw the set again")
    manifest = calib_set.manifest
    for key in ("mean", "std"):
        theirs = manifest.get(key)
        if theirs is None or len(theirs) != len(config[key]) or not np.allclose(theirs, config[key], rtol=_PREPROCESSING_RTOL, atol=1e-7):
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
        raise EdgepipeError(f"calibration batch size must be at least 1, got {batch_size}", fix="use a batch size of 1 or more")
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
