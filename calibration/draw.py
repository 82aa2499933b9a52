"""Drawing a calibration set: class-balanced, seeded, from the calibration pool only, for every model.

The pool is never the held-out part validate judges on; the manifest records the preprocessing, the
split and the drawn indices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from calibration.store import (
    DEFAULT_NUM,
    FORMAT,
    MIN_PER_CLASS,
    MIN_TOTAL,
    CalibrationSet,
    content_sha256,
    minimum_count,
)
from pipeline.checkpoint import model_input_of
from pipeline.digest import sha256_file
from pipeline.errors import EdgepipeError
from pipeline.images import VAL_FRACTION, ModelData, PreprocessFlags
from pipeline.progress import info


def draw_for(
    model: str | Path,
    data: str | None = None,
    num: int = DEFAULT_NUM,
    seed: int = 0,
    labels: str | Path | None = None,
    preprocess: PreprocessFlags | None = None,
    workers: int | None = None,
) -> CalibrationSet:
    """A calibration set for any model file (checkpoint or ONNX): its recorded data, or ``data``."""
    model_input = model_input_of(model, preprocess)
    info(model_input.describe())
    return draw(ModelData.of(model_input, data, labels), Path(model), num=num, seed=seed, workers=workers)


def draw(
    model_data: ModelData, model: Path, num: int = DEFAULT_NUM, seed: int = 0, workers: int | None = None
) -> CalibrationSet:
    """Up to ``num`` images of ``model_data``'s calibration pool, class by class in turns when labelled."""
    classes = model_data.source.class_names if model_data.source.labelled else None
    least = minimum_count(len(classes) if classes else None)
    if num < least:
        per_class = f"{MIN_PER_CLASS} per class, " if classes else ""
        raise EdgepipeError(
            f"--num {num} is too few calibration images"
            + (f" for {len(classes)} classes" if classes else "")
            + f" (minimum {least})",
            fix=f"pass --num {least} or more ({per_class}{MIN_TOTAL} in all keep calibration ranges stable)",
        )
    split, source = model_data.split, model_data.source
    if len(split.pool) < MIN_TOTAL:
        raise EdgepipeError(
            f"the calibration pool of {source.spec} has {len(split.pool)} images (the other {len(split.held_out)} are held out for validation); "
            f"calibration needs at least {MIN_TOTAL}",
            fix=f"add images: {int(np.ceil(MIN_TOTAL / (1 - VAL_FRACTION)))} or more in all",
        )
    picked = model_data.draw(num, seed=seed)
    x, y = model_data.batches(picked, workers=workers, progress="calibrate").collect()
    return CalibrationSet(x, y, _manifest(model_data, model, x, y, picked, num, seed))


def _manifest(model_data: ModelData, model: Path, x, y, picked, num: int, seed: int) -> dict[str, Any]:
    source, model_input = model_data.source, model_data.model_input
    classes = source.class_names if y is not None else None
    return {
        "format": FORMAT,
        "source": source.spec,
        "data_sha256": source.sha256,
        "split": model_data.split.record,
        "seed": seed,
        "requested": num,
        "count": int(len(x)),
        "count_per_class": dict(zip(classes, np.bincount(y, minlength=len(classes)).tolist())) if classes else None,
        "shapes": {"images": list(x.shape), "labels": list(y.shape) if y is not None else None},
        "input_shape": list(x.shape[1:]),
        "layout": model_input.info.layout,
        "preprocess": model_input.preprocess.to_dict(),
        "class_names": list(classes) if classes else None,
        "model": model.name,
        "model_sha256": sha256_file(model),
        "indices": [int(i) for i in picked],
        "sha256": content_sha256(x, y),
    }
