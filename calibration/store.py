"""A calibration set on disk: one .npz format (``images``, optional ``labels``, ``manifest``) for every model.

``check_matches`` refuses a set made for another input or preprocessing; ``batches`` feeds it to a
TensorRT calibrator in fixed-size batches.
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

from pipeline.artifacts import atomic_output, check_output, write_manifest
from pipeline.defaults import DEFAULT_CALIBRATION_SIZE
from pipeline.errors import EdgepipeError
from pipeline.images import ModelInput
from pipeline.preprocess import Preprocess, dims

DEFAULT_NUM = DEFAULT_CALIBRATION_SIZE
# Why these minimums: entropy (KL) calibration picks each tensor's clipping threshold from a
# histogram of its activations, and max calibration takes the largest value seen. Both are
# statistics of the rarest patterns, which differ per class: with fewer than ~8 images of a class
# its activations are not represented and the chosen ranges move noticeably from seed to seed.
# Below 64 images in all, thresholds of the late, low-resolution layers (4x4 maps) rest on too
# few values for a stable histogram. So: at least 8 per class and at least 64 in all.
MIN_PER_CLASS = 8
MIN_TOTAL = 64
FORMAT = 2  # 1: written by older versions, with mean/std instead of the whole preprocessing
_MAKE = "make one with 'edgepipe calibrate --checkpoint MODEL -o calib.npz', or drop --calib to draw one from the model's data"


@dataclass
class CalibrationSet:
    images: np.ndarray  # float32, one preprocessed image per row, in the model's layout
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


def minimum_count(num_classes: int | None) -> int:
    """The fewest images a calibration set may hold for a model with ``num_classes`` classes."""
    return max(MIN_TOTAL, MIN_PER_CLASS * (num_classes or 0))


def save(path: str | Path, calib_set: CalibrationSet, force: bool = False) -> Path:
    """Write ``calib_set`` as an .npz (atomically) and its manifest beside it."""
    path = check_output(path, force)
    if path.suffix != ".npz":
        raise EdgepipeError(f"calibration output {path} must end in .npz", fix="pass -o NAME.npz")
    manifest = {**calib_set.manifest, "sha256": calib_set.sha256}
    arrays = {
        "images": np.ascontiguousarray(calib_set.images, dtype=np.float32),
        "manifest": np.asarray(json.dumps(manifest, sort_keys=True)),
    }
    if calib_set.labels is not None:  # unlabelled images are saved without labels
        arrays["labels"] = calib_set.labels.astype(np.int64)
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a path
            np.savez(f, **arrays)
    kept = ("source", "count", "count_per_class", "shapes", "input_shape", "model", "split", "preprocess")
    write_manifest(
        path,
        "calibration",
        inputs={"data": manifest.get("data_sha256"), "model": manifest.get("model_sha256")},
        params={"num": manifest.get("requested"), "seed": manifest.get("seed"), "split": "pool"},
        **{key: manifest.get(key) for key in (*kept, "layout", "class_names")},
        content_sha256=manifest["sha256"],
    )
    return path


def load(path: str | Path) -> CalibrationSet:
    """Read a calibration set written by ``save``; clear errors for missing, corrupt or bad data."""
    path = Path(path)
    if not path.is_file():
        raise EdgepipeError(f"calibration set {path} does not exist", fix=_MAKE)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise EdgepipeError(f"{path} is not a readable .npz ({type(exc).__name__}: {str(exc)[:120]})", fix=_MAKE)
    missing = [key for key in ("images", "manifest") if key not in arrays]
    if missing:
        raise EdgepipeError(
            f"{path} is not an edgepipe calibration set (no {', '.join(missing)}; it has {', '.join(arrays) or 'nothing'})",
            fix=_MAKE,
        )
    try:
        manifest = json.loads(str(arrays["manifest"]))
    except ValueError:
        raise EdgepipeError(f"{path} has an unreadable description", fix=_MAKE)
    images, labels = arrays["images"], arrays.get("labels")  # no labels: drawn from unlabelled images
    if images.ndim != 4 or images.dtype != np.float32 or (labels is not None and labels.shape != (len(images),)):
        shown = labels.shape if labels is not None else "none"
        raise EdgepipeError(
            f"{path} holds images {images.shape} {images.dtype} and labels {shown}; expected float32 N x C x H x W (or N x H x W x C) and N labels",
            fix=_MAKE,
        )
    if not np.isfinite(images).all():
        bad = int((~np.isfinite(images)).reshape(len(images), -1).any(axis=1).sum())
        raise EdgepipeError(
            f"{path} holds NaN or Inf values in {bad} image(s)",
            fix="clean the source data and draw the set again with 'edgepipe calibrate'",
        )
    manifest.setdefault("path", str(path))
    return CalibrationSet(np.ascontiguousarray(images), None if labels is None else labels.astype(np.int64), manifest)


def check_matches(calib_set: CalibrationSet, model_input: ModelInput, shape_only: bool = False) -> None:
    """Raise when ``calib_set`` was not made for a model with ``model_input``'s input and preprocessing.

    ``shape_only``: the model records no preprocessing, so only the input's shape can be compared.
    """
    fix = "draw a set for this model with 'edgepipe calibrate --checkpoint MODEL', or drop --calib to draw one from its data"
    shape, wanted = list(calib_set.images.shape[1:]), list(model_input.sample_shape)
    if shape != wanted:
        raise EdgepipeError(f"the calibration images are {dims(shape)} but the model takes {dims(wanted)}", fix=fix)
    recorded = calib_set.manifest.get("preprocess")
    if shape_only:
        recorded = model_input.preprocess.to_dict()
    elif recorded is None:
        where = calib_set.manifest.get("path", "the calibration set")
        raise EdgepipeError(f"{where} was made by an older edgepipe (it records no preprocessing)", fix=fix)
    theirs = Preprocess.from_dict(recorded)
    if not _same(theirs, model_input.preprocess):
        raise EdgepipeError(
            f"the calibration images were preprocessed as {theirs.describe()}; the model's are {model_input.preprocess.describe()}",
            fix=fix,
        )
    classes = model_input.num_classes
    if len(calib_set) < minimum_count(classes):
        least = minimum_count(classes)
        raise EdgepipeError(
            f"the calibration set has {len(calib_set)} images; at least {least} are needed"
            + (f" for {classes} classes" if classes else ""),
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


def _same(a: Preprocess, b: Preprocess) -> bool:
    """Equal preprocessing; mean/std equal within float rounding."""
    one, other = a.to_dict(), b.to_dict()
    for key in ("mean", "std"):
        x, y = one.pop(key), other.pop(key)
        if (x is None) != (y is None) or (x is not None and not np.allclose(x, y, rtol=1e-5, atol=1e-7)):
            return False
    return one == other
