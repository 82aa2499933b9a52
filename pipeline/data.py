"""Datasets: the bundled digits, an ImageFolder directory, or an .npz with arrays x and y.

Every dataset is loaded the same way: float32 images N x C x H x W in [0, 1] at the model's input
size, int64 labels, class names, and a sha256 of the content so later stages can tell the data
has not changed. Splits are deterministic for a seed and recorded in the checkpoint; the
held-out split is for evaluation only and calibration never draws from it.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.defaults import DEFAULT_DATA
from pipeline.errors import EdgepipeError
from pipeline.preprocess import Preprocess

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
VAL_FRACTION = 0.2
# Without class_names an .npz's classes are 0..max(y). More than this, and more than its images: the
# labels are ids, not class indices (a classifier head that wide is not what was meant).
MAX_IMPLIED_CLASSES = 100_000


@dataclass
class Dataset:
    images: np.ndarray  # float32, N x C x H x W, values in [0, 1]
    labels: np.ndarray  # int64, N
    class_names: list[str]
    source: str  # "digits" or an absolute path
    sha256: str

    def __len__(self) -> int:
        return len(self.labels)


def resolve_source(spec: str) -> str:
    """'digits' stays as it is; a path becomes absolute so later stages find it again."""
    if spec == DEFAULT_DATA:
        return spec
    path = Path(spec).expanduser()
    if not path.exists():
        raise EdgepipeError(
            f"dataset {spec} does not exist",
            fix="pass --data digits, a folder of class sub-folders, or an .npz with x and y",
        )
    return str(path.resolve())


def load_dataset(
    spec: str = DEFAULT_DATA,
    image_size: int | tuple[int, int] = 32,
    channels: int | None = None,
    geometry: Preprocess | None = None,
) -> Dataset:
    """Load ``spec`` at ``image_size`` (N, or height x width); ``channels`` None keeps the data's own.

    ``geometry`` is a model's own resize and centre crop (timm's evaluation transform), applied to
    an ImageFolder's pictures instead of a plain resize; normalization stays with the caller.
    """
    size = (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))
    source = resolve_source(spec)
    if source == DEFAULT_DATA:
        images, labels, class_names = _load_digits()
    elif Path(source).is_dir():
        images, labels, class_names = _load_image_folder(Path(source), size, channels, geometry)
    elif source.endswith(".npz"):
        images, labels, class_names = _load_npz(Path(source))
    else:
        raise EdgepipeError(
            f"cannot read dataset {spec}",
            fix="pass --data digits, a folder of class sub-folders, or an .npz with x and y",
        )
    images = _to_channels(_resize(images, size), channels, spec)
    labels = labels.astype(np.int64)
    _check_dataset(images, labels, class_names, spec)
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes() + labels.tobytes()).hexdigest()
    return Dataset(images, labels, class_names, source, digest)


def _load_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]  # 8x8 gray, 0..16
    return images, digits.target, [str(name) for name in digits.target_names]


def _load_image_folder(root: Path, size: tuple[int, int], channels: int | None, geometry: Preprocess | None):
    from PIL import Image, UnidentifiedImageError

    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise EdgepipeError(
            f"dataset folder {root} has no class sub-folders",
            fix="put the images of each class in a sub-folder named after the class",
        )
    mode = {1: "L", 3: "RGB"}.get(channels or 0)
    files = [
        (f, label)
        for label, d in enumerate(class_dirs)
        for f in sorted(d.iterdir())
        if f.is_file() and not f.name.startswith(".")
    ]
    if not files:
        raise EdgepipeError(f"dataset folder {root} has no images", fix="put image files in its class sub-folders")
    if mode is None:  # no channel count asked for: RGB if any image has colour
        mode = "L"
        for f, _ in files:
            if f.suffix.lower() in IMAGE_SUFFIXES:
                try:
                    with Image.open(f) as img:
                        if img.mode not in ("L", "1", "I", "I;16", "F"):
                            mode = "RGB"
                            break
                except (OSError, UnidentifiedImageError):
                    pass  # reported below with the file's name
    images, labels = [], []
    for f, label in files:
        try:
            with Image.open(f) as img:
                img = img.convert(mode)
                if geometry is not None:  # the model's own resize and centre crop first
                    img = geometry.resized_and_cropped(img)
                array = np.asarray(img.resize((size[1], size[0]), Image.BILINEAR), dtype=np.float32) / 255.0
        except (OSError, UnidentifiedImageError, ValueError):
            raise EdgepipeError(
                f"{f} is not a readable image", fix="remove it or replace it with an image file (PNG, JPEG, ...)"
            )
        images.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
        labels.append(label)
    return np.stack(images), np.asarray(labels), [d.name for d in class_dirs]


def _load_npz(path: Path):
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise EdgepipeError(f"cannot read {path}: {exc}", fix="pass an .npz written by numpy.savez with arrays x and y")
    missing = [key for key in ("x", "y") if key not in arrays]
    if missing:
        raise EdgepipeError(
            f"{path} has no array {' or '.join(missing)} (it has: {', '.join(arrays) or 'nothing'})",
            fix="save images as x (N,H,W | N,H,W,C | N,C,H,W) and integer labels as y",
        )
    x, y = arrays["x"], arrays["y"]
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise EdgepipeError(
            f"{path}: x has shape {x.shape}", fix="use N,H,W or N,H,W,C or N,C,H,W with 1 or 3 channels"
        )
    if y.ndim != 1 or len(y) != len(x):
        raise EdgepipeError(
            f"{path}: y must be {len(x)} labels, one per image, got shape {y.shape}",
            fix="save one integer class index per image as y",
        )
    names = [str(n) for n in arrays["class_names"]] if "class_names" in arrays else None
    y = _npz_labels(path, y, names)
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    return x, y, names if names is not None else [str(i) for i in range(int(y.max()) + 1 if len(y) else 0)]


def _npz_labels(path: Path, y: np.ndarray, names: list[str] | None) -> np.ndarray:
    """``y`` as int64 class indices 0..N-1, or one error naming what is wrong and how to fix it."""
    renumber = "renumber them 0..N-1, e.g. y = numpy.unique(y, return_inverse=True)[1]"
    if not np.issubdtype(y.dtype, np.integer):
        whole = np.issubdtype(y.dtype, np.floating) and bool(np.isfinite(y).all()) and bool((y == np.round(y)).all())
        fix = (
            "save them as integers: y.astype('int64')"
            if whole
            else f"save one integer class index per image; {renumber}"
        )
        raise EdgepipeError(f"{path}: labels y are {y.dtype}, not integer class indices", fix=fix)
    if len(y) and int(y.min()) < 0:
        raise EdgepipeError(f"{path}: label {int(y.min())} is negative; labels are class indices from 0", fix=renumber)
    largest = int(y.max()) if len(y) else -1
    if names is not None and largest >= len(names):
        raise EdgepipeError(
            f"{path}: label {largest} is out of range: class_names names {len(names)} classes (0..{len(names) - 1})",
            fix=f"{renumber}, or save one class name per class",
        )
    if names is None and largest >= max(len(y), MAX_IMPLIED_CLASSES):
        raise EdgepipeError(
            f"{path}: label {largest} is out of range: it would make {largest + 1} classes for {len(y)} images",
            fix=f"{renumber}, and save the class names as class_names",
        )
    return y.astype(np.int64)


def _resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if images.shape[-2:] == tuple(size):
        return images
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(images))
    return F.interpolate(tensor, size=tuple(size), mode="bilinear", align_corners=False, antialias=True).numpy()


def _to_channels(images: np.ndarray, channels: int | None, spec: str) -> np.ndarray:
    have = images.shape[1]
    if channels is None or channels == have:
        return images
    if have == 1 and channels == 3:
        return np.repeat(images, 3, axis=1)
    if have == 3 and channels == 1:
        return images.mean(axis=1, keepdims=True, dtype=np.float32)
    raise EdgepipeError(
        f"dataset {spec} has {have} channels, the model takes {channels}", fix="use data with 1 or 3 channels"
    )


def _check_dataset(images, labels, class_names, spec) -> None:
    if len(labels) == 0:
        raise EdgepipeError(f"dataset {spec} is empty", fix="add images")
    if not np.isfinite(images).all():
        raise EdgepipeError(f"dataset {spec} holds NaN or Inf values", fix="clean the data")
    if labels.min() < 0 or labels.max() >= len(class_names):
        raise EdgepipeError(
            f"dataset {spec} has labels outside 0..{len(class_names) - 1}",
            fix="label classes 0..N-1 or add class_names",
        )
    counts = np.bincount(labels, minlength=len(class_names))
    if (counts[counts > 0] < 2).any() or (counts > 0).sum() < 2:
        raise EdgepipeError(
            f"dataset {spec} needs at least 2 classes with 2 images each", fix="add more images per class"
        )


def split_indices(
    labels: np.ndarray, seed: int = 0, val_fraction: float = VAL_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded train/held-out split; returns sorted index arrays."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    n_classes = len(np.unique(labels))
    n_val = max(int(round(len(labels) * val_fraction)), n_classes)
    stratify = labels if n_val <= len(labels) - n_classes else None
    train, val = train_test_split(indices, test_size=n_val, random_state=seed, stratify=stratify)
    return np.sort(train), np.sort(val)


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std, the normalization recorded in the checkpoint."""
    mean = images.mean(axis=(0, 2, 3), dtype=np.float64)
    std = images.std(axis=(0, 2, 3), dtype=np.float64)
    return [float(m) for m in mean], [float(max(s, 1e-6)) for s in std]


def normalize(images: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    """The model's preprocessing: (x - mean) / std per channel, float32."""
    mean_a = np.asarray(mean, dtype=np.float32)[None, :, None, None]
    std_a = np.asarray(std, dtype=np.float32)[None, :, None, None]
    return ((images - mean_a) / std_a).astype(np.float32)


def load_for_config(config: dict[str, Any], data: str | None = None) -> Dataset:
    """Reload the dataset a checkpoint was trained on (or ``data``) with its preprocessing size."""
    spec = data or config["data"]["source"]
    channels, height, width = config["input_shape"]
    geometry = Preprocess.from_dict(config["preprocess"]) if config.get("preprocess") else None
    dataset = load_dataset(spec, image_size=(height, width), channels=channels, geometry=geometry)
    if len(dataset.class_names) != len(config["class_names"]):
        raise EdgepipeError(
            f"dataset {spec} has {len(dataset.class_names)} classes, the model {len(config['class_names'])}",
            fix="pass the --data the model was trained on",
        )
    return dataset


def split_of(config: dict[str, Any], dataset: Dataset, which: str) -> tuple[np.ndarray, np.ndarray]:
    """The 'train' or 'val' (held-out) split recorded in ``config``, normalized; (x, y).

    On the data the model was trained on, the recorded split is used as it is. Other data (a
    user's own test or calibration images) was never seen in training, so all of it is used.
    """
    same_data = dataset.sha256 == config["data"]["sha256"]
    if same_data:
        val = np.asarray(config["split"]["val_indices"], dtype=np.int64)
        mask = np.zeros(len(dataset), dtype=bool)
        mask[val] = True
        indices = np.flatnonzero(mask if which == "val" else ~mask)
    else:
        indices = np.arange(len(dataset))
    images = normalize(dataset.images[indices], config["mean"], config["std"])
    return images, dataset.labels[indices]
