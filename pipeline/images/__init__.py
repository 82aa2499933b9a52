"""The user's images, where they already are: an ImageFolder, a flat folder, an .npz, or the bundled digits.

Images are listed, never decoded up front, and streamed in preprocessed batches by parallel
workers, so a folder of 100,000 photos costs a file list, not 60 GB of float32:

    source = images.open_source("photos/", labels="labels.txt", num_classes=4)
    split = source.split(seed=0, val_fraction=0.2)        # calibration pool / held-out, recorded
    for x, y in source.batches(preprocess, split.held_out, batch_size=64, progress="validate"):
        ...

The rooms, each importing only the ones after it: ``model_input.py`` (``ModelInput``: the
preprocessing and classes of a model's input; ``PreprocessFlags``) and ``kinds.py`` (folders,
.npz, digits) -> ``source.py`` (``ImageSource``: labels, identity, split, draw) -> ``stream.py``
(``BatchStream``: DataLoader workers, shared memory, a bad file named when reached).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import EdgepipeError
from pipeline.images.kinds import DigitsSource, FileSource, NpzSource
from pipeline.images.model_input import FLAG_KEYS, ModelInput, PreprocessFlags, refuse_for_recorded
from pipeline.images.source import DIGITS, IMAGE_SUFFIXES, SPLIT_SEED, VAL_FRACTION, ImageSource, Split, read_labels
from pipeline.images.stream import DEFAULT_BATCH_SIZE, BatchStream, default_workers

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DIGITS",
    "FLAG_KEYS",
    "IMAGE_SUFFIXES",
    "SPLIT_SEED",
    "VAL_FRACTION",
    "BatchStream",
    "ImageSource",
    "ModelInput",
    "PreprocessFlags",
    "Split",
    "default_workers",
    "open_source",
    "read_labels",
    "refuse_for_recorded",
]

_DATA_FIX = "pass --data digits, a folder of class sub-folders, a folder of images, or an .npz with x (and y)"


def open_source(spec: str, labels: str | Path | None = None, num_classes: int | None = None) -> ImageSource:
    """The images ``spec`` names: 'digits', a folder (class sub-folders, or images), or an .npz.

    ``labels``: a labels file, one class name per line in the model's output order.
    ``num_classes``: the model's class count, checked against the labels file and the data.
    """
    names = read_labels(labels) if labels is not None else None
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
