"""The kinds of ``ImageSource`` and ``open_source``, which picks one; each decodes an image only when read."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from pipeline.errors import EdgepipeError
from pipeline.images.npz import NpzSource
from pipeline.images.source import DIGITS, ImageSource, folder_labels, list_images, read_labels
from pipeline.preprocess import Preprocess

_DATA_FIX = "pass --data digits, a folder of class sub-folders, a folder of images, or an .npz with pixels x or model inputs (and y)"


class PathList:
    """File names packed in one bytes object, read back one at a time. Forked stream workers share the main
    process's memory until they write to it, and a list of 20,000 str objects would be written to as each
    name is used (its reference count changes), copying a page per image into every worker: memory that
    grows with the data set. One bytes object and an offsets array are only read."""

    def __init__(self, paths: list[str]):
        encoded = [p.encode("utf-8", "surrogateescape") for p in paths]
        self._blob = b"".join(encoded)
        self._ends = np.cumsum([len(e) for e in encoded], dtype=np.int64)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int) -> str:
        start = int(self._ends[index - 1]) if index > 0 else 0
        return self._blob[start : int(self._ends[index])].decode("utf-8", "surrogateescape")


class FileSource(ImageSource):
    """Image files: an ImageFolder (one sub-folder per class) or a flat folder of unlabelled images."""

    def __init__(self, root: Path, files: list[Path], labels, class_names, kind: str):
        super().__init__(str(root), len(files), labels, class_names)
        self.root, self.files, self.kind = root, PathList([str(f) for f in files]), kind

    @classmethod
    def from_folder(cls, root: Path, names: list[str] | None, labels_file: str | None) -> FileSource:
        class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        per_class = [list_images(d, recursive=True) for d in class_dirs]
        loose = list_images(root, recursive=False)
        if any(per_class):
            if loose:
                shown = ", ".join(p.name for p in loose[:3]) + (", ..." if len(loose) > 3 else "")
                raise EdgepipeError(
                    f"{root} holds both class sub-folders and {len(loose)} image(s) outside them ({shown})",
                    fix="move those images into their class's sub-folder, or point --data at a folder of images only",
                )
            indices, class_names = folder_labels([d.name for d in class_dirs], names, labels_file)
            files = [f for files in per_class for f in files]
            labels = np.asarray([index for index, files in zip(indices, per_class) for _ in files], dtype=np.int64)
            return cls(root, files, labels, class_names, "ImageFolder")
        if not loose:
            raise EdgepipeError(f"{root} holds no images", fix="put image files in it, or in one sub-folder per class")
        return cls(root, loose, None, names, "folder of images")

    @property
    def channels(self) -> int:
        """3 when any image has colour, else 1 (what a model trained on these images takes)."""
        from PIL import Image

        for name in self.files:
            try:
                with Image.open(name) as image:
                    if image.mode not in ("L", "1", "I", "I;16", "F"):
                        return 3
            except OSError:
                continue  # reported by name when its batch is read
        return 1

    def name_of(self, index: int) -> str:
        return self.files[index]

    def read(self, index: int):
        from PIL import Image

        with Image.open(self.files[index]) as image:
            image.load()  # decode now, inside the caller's error handling
            return image

    def _identity(self) -> bytes:
        digest = hashlib.sha256()
        labels = self.labels if self.labels is not None else [-1] * len(self.files)
        for name, label in zip(self.files, labels):
            stat = Path(name).stat()
            digest.update(
                f"{Path(name).relative_to(self.root)}\t{stat.st_size}\t{stat.st_mtime_ns}\t{label}\n".encode()
            )
        return digest.digest()


class DigitsSource(ImageSource):
    """scikit-learn's bundled digits: 1,797 8x8 grayscale images in 10 classes, float in [0, 1]."""

    kind = "bundled digits"
    channels = 1
    in_memory = True

    def __init__(self, names: list[str] | None):
        from sklearn.datasets import load_digits  # only when the digits are asked for

        digits = load_digits()
        self._native = (digits.images / 16.0).astype(np.float32)[:, None]  # N x 1 x 8 x 8, 0..16 scaled
        labels = digits.target.astype(np.int64)
        super().__init__(DIGITS, len(labels), labels, names or [str(name) for name in digits.target_names])
        self._images = self._native

    def prepare(self, preprocess: Preprocess) -> None:  # a square size: resized once, as the zoo trains on
        resize = preprocess.resize
        size = tuple(resize) if isinstance(resize, tuple) and resize[0] == resize[1] else (8, 8)
        if size == (8, 8):
            self._images = self._native
        elif self._images.shape[-2:] != size:
            import torch  # the digits' resize: torch's antialiased bilinear
            import torch.nn.functional as F

            tensor = torch.from_numpy(np.ascontiguousarray(self._native))
            resized = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False, antialias=True)
            self._images = resized.numpy()

    def name_of(self, index: int) -> str:
        return f"digits[{index}]"

    def read(self, index: int) -> np.ndarray:
        return self._images[index].transpose(1, 2, 0)

    def _identity(self) -> bytes:
        pixels = np.ascontiguousarray(self._native).tobytes() + self.labels.tobytes()
        return hashlib.sha256(pixels).hexdigest().encode()


def open_source(
    spec: str, labels: str | Path | None = None, num_classes: int | None = None, names: list[str] | None = None
) -> ImageSource:
    """The images ``spec`` names: 'digits', a folder (class sub-folders, or images), or an .npz; labelled
    by the ``labels`` file, else ``names`` (what a model records), checked against ``num_classes``."""
    names = read_labels(labels) if labels is not None else list(names) if names else None
    if names is not None and num_classes is not None and len(names) != num_classes:
        relation = "fewer" if len(names) < num_classes else "more"
        raise EdgepipeError(
            f"labels file {labels} has {len(names)} names, {relation} than the model's {num_classes} classes",
            fix="list every class the model outputs, one per line, in its output order",
        )
    if spec == DIGITS:
        source = DigitsSource(names)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise EdgepipeError(f"dataset {spec} does not exist", fix=_DATA_FIX)
        if path.is_dir():
            source = FileSource.from_folder(path.resolve(), names, str(labels) if labels else None)
        elif path.suffix.lower() == ".npz":
            source = NpzSource(path.resolve(), names)
        else:
            raise EdgepipeError(f"cannot read dataset {spec} (not a folder or an .npz)", fix=_DATA_FIX)
    limit = num_classes if num_classes is not None else len(names) if names else None
    if source.labelled and limit is not None:
        _check_label_range(source, limit, labels)
    return source


def _check_label_range(source: ImageSource, num_classes: int, labels_file) -> None:
    top = int(source.labels.max()) if len(source.labels) else -1
    if top >= num_classes:
        if source.kind == "ImageFolder" and labels_file is None:
            raise EdgepipeError(
                f"{source.spec} has {len(source.class_names)} class folders but the model has {num_classes} classes",
                fix="pass --labels FILE naming the model's classes in output order, or remove the extra folders",
            )
        raise EdgepipeError(
            f"{source.spec} has label {top}, out of range for the model's {num_classes} classes (0..{num_classes - 1})",
            fix="label images with class indices the model outputs",
        )
    if source.kind == "ImageFolder" and labels_file is None and len(source.class_names) != num_classes:
        raise EdgepipeError(
            f"{source.spec} has {len(source.class_names)} class folders but the model has {num_classes} classes, so sorted folder names cannot be its output order",
            fix="pass --labels FILE with the model's class names, one per line in output order",
        )
