"""What a converted model is checked on, and its figures against the FP32 model on every output.

edgepipe's own exports are checked on their recorded held-out split (``heldout.py``). A model
edgepipe did not export is checked here, on:

* the user's images (``--data``): the held-out part of a seeded split, the rest being the pool
  calibration is drawn from (``user_images``);
* else, for INT8, the calibration images themselves;
* else, for FP16 (which needs no data), seeded synthetic inputs (``synthetic``), and says so.

``Check`` runs the FP32 model on them once, then measures each candidate (the FP16 model, or each
step of the INT8 budget search) with ``pipeline.fidelity.Fidelity``: per output max/mean abs
difference, cosine, argmax agreement along the last axis, and top-1 when there are labels.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data import VAL_FRACTION, split_indices
from pipeline.errors import EdgepipeError
from pipeline.fidelity import Fidelity
from pipeline.images import ModelInput
from pipeline.images import open_source as open_images
from pipeline.onnxfile import CONFIG_KEY
from pipeline.onnxinfo import ModelInfo, synthetic_batch
from pipeline.progress import info as say

SYNTHETIC_COUNT = 32  # seeded synthetic inputs an FP16 model is checked on when no images are given
SPLIT_SEED = 0
_BATCH = 16  # images per ONNX Runtime call for a model with a dynamic batch
POOL_LIMIT = 512  # calibration-pool images of a folder decoded for INT8 (calibration.DEFAULT_NUM)
CHECK_LIMIT = 500  # held-out images of a folder a conversion is checked on (in memory: each candidate runs on them)


@dataclass
class Images:
    """Inputs already in the model's layout, size and dtype, optional labels, and what they are."""

    x: np.ndarray
    y: np.ndarray | None
    what: str  # "synthetic", "calibration" or "data"
    text: str  # how messages name them: "32 synthetic inputs"
    hint: str = ""  # what a user can do for a better check: "pass --data for your images"
    extra: dict[str, Any] | None = None  # for a folder: its split and the preprocessing, as recorded
    preprocess: Any = None  # for a folder: the Preprocess the images went through (stored in the converted model)

    def __len__(self) -> int:
        return len(self.x)

    @property
    def labelled(self) -> bool:
        return self.y is not None

    def record(self) -> dict[str, Any]:
        return {
            "on": self.what,
            "images": len(self),
            "labelled": self.labelled,
            "text": self.text,
            "hint": self.hint,
            **(self.extra or {}),
        }


def synthetic(info: ModelInfo, sample_shape: tuple[int, ...], count: int = SYNTHETIC_COUNT, seed: int = 0) -> Images:
    """``count`` seeded standard-normal inputs (``onnxinfo.synthetic_batch``) at the fixed shape."""
    height, width = (sample_shape[1], sample_shape[2]) if info.layout == "nchw" else (sample_shape[0], sample_shape[1])
    chunks, total = [], 0
    while total < count:  # a model with a fixed batch gives that many per seed
        chunk = synthetic_batch(info, batch=count - total, height=height, width=width, seed=seed + len(chunks))
        chunks.append(chunk)
        total += len(chunk)
    return Images(np.concatenate(chunks)[:count], None, "synthetic", f"{count} synthetic inputs (seeded)")


def user_images(
    data: str | Path,
    model: Any,
    info: ModelInfo,
    sample_shape: tuple[int, ...] | None,
    *,
    preprocess: Any = None,
    labels: str | Path | None = None,
    workers: int | None = None,
) -> tuple[Images, Images]:
    """The calibration pool and the held-out images of ``--data`` for a model edgepipe did not export.

    The one place ``--data`` becomes images for such a model:

    * a folder (class sub-folders, or images) is listed by ``pipeline.images``, split with the seed
      every stage uses, and read through the model's preprocessing (stored in ``model``, or the
      ``preprocess`` flags); at most ``POOL_LIMIT`` pool and ``CHECK_LIMIT`` held-out images are
      decoded, drawn seeded (class by class when labelled), since every candidate is run on them;
    * an .npz holds ``x`` already preprocessed in the model's layout (and ``y``, one class index per
      image, optional), split the same way (stratified when labelled).
    """
    path = Path(data)
    if path.is_dir():
        return _folder_images(path, model, info, sample_shape, preprocess, labels, workers)
    if path.suffix.lower() != ".npz" or not path.is_file():
        raise EdgepipeError(
            f"--data {data} is neither a folder of images nor an .npz file",
            fix="pass a folder of images (class sub-folders for labels), or an .npz with x (images preprocessed for the model) and optionally y",
        )
    given = (preprocess.flag_names() if preprocess is not None else []) + (["--labels"] if labels is not None else [])
    if given:
        raise EdgepipeError(
            f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to a folder of images; x in {path.name} is already preprocessed for the model",
            fix=f"drop {', '.join(given)}, or pass the folder of images instead of the .npz",
        )
    x, y = read_npz(path, "--data")
    check_fits(info, x, sample_shape, f"--data {path.name}")
    if y is not None:
        pool, held_out = split_indices(y, seed=SPLIT_SEED, val_fraction=VAL_FRACTION)
    else:
        order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
        cut = max(1, int(round(len(x) * VAL_FRACTION)))
        held_out, pool = np.sort(order[:cut]), np.sort(order[cut:])

    def part(indices: np.ndarray, name: str) -> Images:
        return Images(
            x[indices], None if y is None else y[indices], "data", f"{len(indices)} {name} images of {path.name}"
        )

    return part(pool, "calibration-pool"), part(held_out, "held-out")


def _folder_images(
    folder: Path, model: Any, info: ModelInfo, sample_shape, preprocess, labels, workers
) -> tuple[Images, Images]:
    """A folder of the user's images, split and read through the model's preprocessing (see ``user_images``)."""
    model_input = ModelInput.of_onnx(model, preprocess)
    say(model_input.describe())
    source = open_images(str(folder), labels=labels, num_classes=model_input.num_classes)
    split = source.split(seed=SPLIT_SEED, val_fraction=VAL_FRACTION)
    extra = {"split": split.record, "preprocess": model_input.record()}

    pool = _read_folder(source, model_input, split.pool, POOL_LIMIT, "calibration-pool", folder.name, extra, workers)
    held_out = _read_folder(source, model_input, split.held_out, CHECK_LIMIT, "held-out", folder.name, extra, workers)
    check_fits(info, pool.x, sample_shape, f"--data {folder.name}")
    return pool, held_out


def folder_calibration(
    folder: Path, model: Any, *, preprocess: Any = None, labels: str | Path | None = None, workers: int | None = None
) -> Images:
    """A folder given as ``--calib``: every image may calibrate; up to ``POOL_LIMIT`` of them, drawn seeded, through the model's preprocessing."""
    model_input = ModelInput.of_onnx(model, preprocess)
    say(model_input.describe())
    source = open_images(str(folder), labels=labels, num_classes=model_input.num_classes)
    return _read_folder(
        source,
        model_input,
        np.arange(len(source)),
        POOL_LIMIT,
        "calibration",
        folder.name,
        {"preprocess": model_input.record()},
        workers,
    )


def _read_folder(
    source: Any,
    model_input: ModelInput,
    indices: np.ndarray,
    limit: int,
    name: str,
    folder_name: str,
    extra: dict[str, Any],
    workers: int | None,
) -> Images:
    """Up to ``limit`` of ``indices`` (seeded, class by class when labelled), decoded into memory in the model's layout."""
    picked = source.draw(indices, limit, seed=SPLIT_SEED)
    batches = list(source.batches(model_input.preprocess, picked, progress=f"reading {name} images", workers=workers))
    x = np.concatenate([batch for batch, _ in batches])
    y = (
        np.concatenate([batch_labels for _, batch_labels in batches])
        if source.labelled and model_input.num_classes
        else None
    )
    of = f" (seeded draw of {len(indices):,})" if len(picked) < len(indices) else ""
    return Images(
        x,
        y,
        "data",
        f"{len(picked):,} {name} images of {folder_name}{of}",
        extra=extra,
        preprocess=model_input.preprocess,
    )


def folder_preprocess(
    model: Any, data: str | Path | None, preprocess: Any = None, calib: Any = None
) -> dict[str, Any] | None:
    """The preprocessing a folder given as ``data`` or ``calib`` is read with for a model edgepipe did not export, as manifests record it; else None."""
    folders = [path for path in (data, calib) if isinstance(path, (str, Path)) and Path(path).is_dir()]
    if not folders or any(prop.key == CONFIG_KEY for prop in model.metadata_props):
        return None
    return json.loads(json.dumps(ModelInput.of_onnx(model, preprocess).preprocess.to_dict()))


def read_npz(path: Path, flag: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``x`` (and ``y`` when present) of an .npz; one clear error for anything else."""
    fix = "save images preprocessed for the model with numpy.savez(path, x=images[, y=labels])"
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files if key in ("x", "y", "images", "labels")}
    except Exception as exc:  # numpy raises OSError, ValueError, zipfile errors ... for a bad file
        raise EdgepipeError(f"{flag} {path} is not a readable .npz ({type(exc).__name__})", fix=fix) from None
    x = arrays.get("x", arrays.get("images"))
    y = arrays.get("y", arrays.get("labels"))
    if x is None:
        raise EdgepipeError(f"{flag} {path} has no array x", fix=fix)
    if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x.astype(np.float64, copy=False)).all():
        raise EdgepipeError(
            f"{flag} {path} holds non-numeric, NaN or Inf values in x", fix="clean the images and save them again"
        )
    if y is not None and (
        y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer) or (len(y) and y.min() < 0)
    ):
        raise EdgepipeError(
            f"{flag} {path} has labels y of shape {y.shape} ({y.dtype}); expected one class index (0 or more) per image, {len(x)} in all",
            fix="save y as integers, one per image in x, or leave y out",
        )
    return x, (y.astype(np.int64) if y is not None else None)


def check_fits(info: ModelInfo, x: np.ndarray, sample_shape: tuple[int, ...] | None, what: str) -> None:
    """``x`` (N images) must fit the model's input: its static dims, and the fixed shape where set."""
    shape = tuple(info.input.shape[1:])
    wanted = " x ".join(str(d) for d in shape)
    layout = "N x " + (" x ".join(("C", "H", "W")) if info.layout == "nchw" else " x ".join(("H", "W", "C")))
    bad = x.ndim != info.input.rank or any(isinstance(d, int) and d > 0 and d != g for d, g in zip(shape, x.shape[1:]))
    if not bad and sample_shape is not None:
        bad = tuple(x.shape[1:]) != tuple(sample_shape)
        wanted = " x ".join(str(d) for d in sample_shape)
    if bad:
        raise EdgepipeError(
            f"{what} holds images of shape {' x '.join(str(d) for d in x.shape[1:])} ({len(x)} of them), but the model's input "
            f"'{info.input_name}' takes {wanted} ({layout}, {info.input.text()})",
            fix=f"preprocess the images to {wanted}, in the model's layout",
        )
    if len(x) == 0:
        raise EdgepipeError(f"{what} holds no images", fix="give at least one image")


class Check:
    """The FP32 model's outputs on ``images``, computed once; ``measure`` compares any candidate with them."""

    def __init__(self, fp32_bytes: bytes, images: Images, info: ModelInfo):
        self.images, self.info = images, info
        self.batch = info.batch or _BATCH
        self.reference = list(self._run(fp32_bytes))
        classes = self.reference[0][1][0].shape[-1] if self.reference else 0
        if images.y is not None and images.y.max(initial=0) >= classes:
            raise EdgepipeError(
                f"the labels of the {images.text} go up to {int(images.y.max())}, but output '{info.output_names[0]}' has {classes} classes",
                fix="give labels as class indices in the model's output order (0 to classes - 1)",
            )

    def record(self) -> dict[str, Any]:
        return self.images.record()

    def measure(self, model_bytes: bytes) -> dict[str, Any]:
        """Figures of the candidate against FP32: the first output's at the top, every output's under "outputs"."""
        fidelity = Fidelity(self.info.output_names)
        for (labels, reference), (_, outputs) in zip(self.reference, self._run(model_bytes)):
            fidelity.update(reference, outputs, labels)
        result = fidelity.result()
        figures = {"samples": result["samples"], "agreement": result["top1_agreement"]}
        if "top1" in result:
            figures.update(top1=result["top1"], reference_top1=result["reference_top1"], delta=result["delta"])
        figures.update({key: result[key] for key in ("max_abs_diff", "mean_abs_diff", "cosine", "cosine_min")})
        figures["outputs"] = {
            name: {
                key: value for key, value in figures_of.items() if key not in ("passed", "required_atol", "nonfinite")
            }
            for name, figures_of in result["outputs"].items()
        }
        return figures

    def _run(self, model_bytes: bytes) -> Iterator[tuple[np.ndarray | None, list[np.ndarray]]]:
        import onnxruntime as ort  # loaded by the first check of a conversion, not by `edgepipe --help`

        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        x, y = self.images.x, self.images.y
        for start in range(0, len(x), self.batch):
            batch = x[start : start + self.batch]
            count = len(batch)
            if len(batch) < self.batch and self.info.batch:  # a fixed batch: fill it, compare only the real images
                batch = np.resize(batch, (self.batch, *batch.shape[1:]))
            outputs = session.run(None, {name: np.ascontiguousarray(batch)})
            yield (
                (None if y is None else _labels_for(y[start : start + count], outputs[0][:count])),
                [o[:count] for o in outputs],
            )


def check_summary(manifest: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a converted model was checked on, and its figures against FP32 (first output), from its manifest."""
    if not manifest or not manifest.get("check"):
        return None
    accuracy = manifest.get("accuracy") or {}
    figures = {
        key: accuracy[key]
        for key in ("samples", "top1", "delta", "agreement", "max_abs_diff", "cosine")
        if accuracy.get(key) is not None
    }
    extra = {key: manifest[key] for key in ("kept_nodes", "macs") if manifest.get(key)}
    return {
        "precision": manifest.get("precision"),
        "on": manifest["check"].get("text"),
        "hint": manifest["check"].get("hint", ""),
        **figures,
        **extra,
    }


def _labels_for(labels: np.ndarray, output: np.ndarray) -> np.ndarray | None:
    """Labels count for classifiers (N x C outputs); a sequence model's per-image labels are not per position."""
    return labels if output.ndim == 2 else None
