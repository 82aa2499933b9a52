"""What every kind of image source is: images listed, not decoded; labels in the model's order; splits.
Pixels are read only when a batch is streamed, so a folder of 100,000 photos costs a file list, not 60 GB
of float32. ``--labels FILE`` maps ImageFolder sub-folder names to the model's indices, because sorted
folder names rarely match it ("0, 180, 270, 90")."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.defaults import DEFAULT_DATA
from pipeline.errors import EdgepipeError
from pipeline.images.stream import BatchStream
from pipeline.preprocess import Preprocess, did_you_mean

DIGITS = DEFAULT_DATA  # the bundled digits
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
VAL_FRACTION = 0.2
SPLIT_SEED = 0  # the seed of the calibration pool / held-out split of a user's data, so every stage draws the same


@dataclass
class Split:
    """A seeded, non-overlapping calibration pool / held-out split; ``record`` is what to store."""

    pool: np.ndarray  # sorted source indices calibration may draw from
    held_out: np.ndarray  # sorted source indices artifacts are judged on, never calibrated on
    record: dict[str, Any]


class ImageSource:
    """Images listed but not decoded. ``labels`` is int64 in the model's output order, or None."""

    kind = "images"
    channels = 3  # the images' own channel count (1 when every image is grayscale)
    preprocessed = False  # True: the rows are model inputs already, fed as they are (an .npz's inputs)
    in_memory = False  # True: nothing to decode, so no worker processes are started to read it

    def __init__(self, spec: str, count: int, labels: np.ndarray | None, class_names: list[str] | None):
        self.spec, self._count, self.labels, self.class_names = spec, count, labels, class_names

    def __len__(self) -> int:
        return self._count

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    @cached_property
    def sha256(self) -> str:
        """Identity of the data without reading every pixel (file list, sizes, mtimes; or file content)."""
        return hashlib.sha256(self._identity() + repr(self.class_names).encode()).hexdigest()

    def describe(self) -> str:  # e.g. '2,000 images in 4 classes from /data/rotations (ImageFolder)'
        labels = f"in {len(self.class_names)} classes" if self.labelled else "unlabelled"
        return f"{len(self):,} images {labels} from {self.spec} ({self.kind})"

    def split(self, seed: int = 0, val_fraction: float = VAL_FRACTION) -> Split:  # stratified when labelled
        if not 0.0 < val_fraction < 1.0:
            raise EdgepipeError(f"held-out fraction {val_fraction} must lie between 0 and 1", fix="use e.g. 0.2")
        if len(self) < 2:
            raise EdgepipeError(
                f"{self.spec} has {len(self)} image(s); a calibration pool and held-out split need at least 2",
                fix="add images",
            )
        counts = np.bincount(self.labels) if self.labelled else np.zeros(0, dtype=np.int64)
        present = counts[counts > 0]
        stratified = len(present) >= 2 and present.min() >= 2  # two classes, each with a pool and a held-out image
        if stratified:
            pool, held_out = split_indices(self.labels, seed=seed, val_fraction=val_fraction)
        else:
            order = np.random.default_rng(seed).permutation(len(self))
            n_held = min(max(int(round(len(self) * val_fraction)), 1), len(self) - 1)
            pool, held_out = np.sort(order[n_held:]), np.sort(order[:n_held])
        record = {
            "source": self.spec,
            "seed": int(seed),
            "val_fraction": float(val_fraction),
            "stratified": bool(stratified),
            "counts": {"pool": int(len(pool)), "held_out": int(len(held_out))},
            "source_sha256": self.sha256,
            "held_out_sha256": hashlib.sha256(self.sha256.encode() + held_out.astype(np.int64).tobytes()).hexdigest(),
        }
        return Split(np.asarray(pool, dtype=np.int64), np.asarray(held_out, dtype=np.int64), record)

    def redraw(self, record: dict[str, Any]) -> Split:  # raises when the data changed since
        if record.get("source_sha256") != self.sha256:
            raise EdgepipeError(
                f"{self.spec} changed since its split was drawn (images added, removed, modified or relabelled)",
                fix="pass the data the split was drawn from, or start again to draw a new split",
            )
        split = self.split(record["seed"], record["val_fraction"])
        if split.record["held_out_sha256"] != record.get("held_out_sha256"):
            raise EdgepipeError(
                f"the recorded split of {self.spec} cannot be drawn again (the held-out images differ)",
                fix="start again to draw a new split",
            )
        return split

    def draw(self, indices, num: int, seed: int = 0) -> np.ndarray:
        """Up to ``num`` of ``indices`` (e.g. ``split.pool``), seeded; class by class in turns when labelled."""
        indices = np.asarray(indices, dtype=np.int64)
        rng = np.random.default_rng(seed)
        if not self.labelled:
            return np.sort(rng.permutation(indices)[:num])
        pools = [rng.permutation(indices[self.labels[indices] == c]) for c in np.unique(self.labels[indices])]
        picked = [
            pool[depth] for depth in range(max(map(len, pools), default=0)) for pool in pools if depth < len(pool)
        ]
        return np.sort(np.asarray(picked[:num], dtype=np.int64))

    def batches(self, preprocess: Preprocess, indices=None, **options: Any) -> BatchStream:  # options: BatchStream's
        return BatchStream(self, preprocess, indices, **options)

    # What each kind of source implements:
    def name_of(self, index: int) -> str:  # how an image is named in messages
        raise NotImplementedError

    def read(self, index: int):  # the decoded PIL image, or a float H x W x C array; raises if it does not decode
        raise NotImplementedError

    def prepare(self, preprocess: Preprocess) -> None:  # before workers start (shared, read-only state)
        pass

    def _identity(self) -> bytes:
        raise NotImplementedError


def read_labels(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise EdgepipeError(
            f"labels file {path} does not exist",
            fix="pass --labels with a text file holding one class name per line, in the model's output order",
        )
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise EdgepipeError(f"labels file {path} is not a text file", fix="write one class name per line (UTF-8 text)")
    if not names:
        raise EdgepipeError(
            f"labels file {path} is empty", fix="write one class name per line, in the model's output order"
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise EdgepipeError(
            f"labels file {path} names {', '.join(repeated)} more than once",
            fix="list each class once, in the model's output order",
        )
    return names


def folder_labels(
    folder_names: list[str], names: list[str] | None, labels_file: str | None
) -> tuple[list[int], list[str]]:
    if names is None:
        return list(range(len(folder_names))), list(folder_names)
    missing = [folder for folder in folder_names if folder not in names]
    if missing:
        unused = [name for name in names if name not in folder_names]  # a renamed folder matches a name no folder has
        hint = did_you_mean(missing, unused)
        raise EdgepipeError(
            f"class folder{'s' if len(missing) > 1 else ''} {', '.join(missing)} {'are' if len(missing) > 1 else 'is'} not in labels file {labels_file}{hint}",
            fix="rename the folders to names from the labels file, or add the missing names in the model's output order",
        )
    return [names.index(folder) for folder in folder_names], list(names)


def split_indices(
    labels: np.ndarray, seed: int = SPLIT_SEED, val_fraction: float = VAL_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split  # only when a labelled source is split

    indices = np.arange(len(labels))
    n_classes = len(np.unique(labels))
    n_val = max(int(round(len(labels) * val_fraction)), n_classes)
    stratify = labels if n_val <= len(labels) - n_classes else None
    train, val = train_test_split(indices, test_size=n_val, random_state=seed, stratify=stratify)
    return np.sort(train), np.sort(val)


def list_images(folder: Path, recursive: bool) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        found += [Path(root) / f for f in files if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(found)
