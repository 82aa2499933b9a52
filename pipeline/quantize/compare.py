"""The one FP32 comparison of a converted model: what it is compared on, and its figures on every output.

Every model is compared the same way, on:

* the held-out part of its images (``data_images``): ``--data``, else the data the model records,
  split as the model records it (the rest is the pool calibration is drawn from);
* else, for INT8, the calibration images themselves;
* else, for FP16 (which needs no data), seeded synthetic inputs (``synthetic``), and says so.

``Comparison`` runs the FP32 model on them once, then measures each candidate (the FP16 model, or each
step of the INT8 budget search) with ``pipeline.fidelity.Fidelity``: per output max/mean abs
difference, cosine, argmax agreement along the last axis, and top-1 when there are labels.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import EdgepipeError
from pipeline.fidelity import Fidelity
from pipeline.images import SPLIT_SEED, ModelData, ModelInput
from pipeline.onnxinfo import SYNTHETIC_COUNT, ModelInfo, cpu_session, synthetic_batch
from pipeline.quantize.source import Fp32Source

_BATCH = 64  # images per ONNX Runtime call for a model with a dynamic batch
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


@dataclass(frozen=True)
class Reading:
    """How a conversion reads images: ``--data``, the fixed height/width of a dynamic-H/W model (and the
    flag that gave it), the preprocessing flags, ``--labels`` and the decoding workers."""

    data: str | None = None
    size: tuple[int, int] | None = None
    size_flag: str = "--input-size"
    preprocess: Any = None
    labels: str | Path | None = None
    workers: int | None = None


def model_data_for(source: Fp32Source, reading: Reading, calib: Any = None) -> tuple[ModelInput, ModelData | None]:
    """The model's input and its images (``--data``, else the data it records; None when there are none)."""
    model_input = ModelInput.of_onnx(source.model, reading.preprocess)
    if reading.data is None and (model_input.record.source is None or calib is not None):
        return model_input, None
    return model_input, ModelData.of(model_input, reading.data, reading.labels)


def check_images(model_data: ModelData, source: Fp32Source, workers: int | None = None) -> Images:
    """The held-out images a conversion is compared on; they fix a dynamic height/width not given."""
    images = data_images(model_data, workers)
    if source.info.dynamic_hw and source.size is None:
        source.fix_size(
            tuple(images.x.shape[a] for a in source.info.hw_axes), f"--data {Path(model_data.source.spec).name}"
        )
    check_fits(source.info, images.x, source.sample_shape, "--data")
    return images


def stored_record(model_input: ModelInput, model_data: ModelData | None, converted) -> None:
    """Flags given for the images: their preprocessing, with the data and split, goes into the converted model."""
    if model_data is not None and "given" in model_input.origin:
        model_data.record().store_in(converted)


def data_images(model_data: ModelData, workers: int | None = None) -> Images:
    """Up to ``CHECK_LIMIT`` held-out images of the model's data (seeded, class by class when labelled), in memory:
    every candidate of a conversion runs on them."""
    held_out = model_data.split.held_out
    picked = model_data.draw(CHECK_LIMIT, seed=SPLIT_SEED, held_out=True)
    x, y = model_data.batches(picked, workers=workers, progress="reading held-out images").collect()
    of = f" (seeded draw of {len(held_out):,})" if len(picked) < len(held_out) else ""
    name = Path(model_data.source.spec).name
    extra = {"split": model_data.split.record, "preprocess": model_data.model_input.summary()}
    return Images(
        x, y if model_data.labelled else None, "data", f"{len(picked):,} held-out images of {name}{of}", extra=extra
    )


def folder_preprocess(model: Any, data: Any, preprocess: Any = None, calib: Any = None) -> dict[str, Any] | None:
    """The preprocessing images given as ``data`` or ``calib`` are read with, as manifests record it; else None."""
    if data is None and not (isinstance(calib, (str, Path)) and Path(calib).is_dir()):
        return None
    return ModelInput.of_onnx(model, preprocess).preprocess.to_dict()


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


class Comparison:
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
        session = cpu_session(model_bytes)
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
