"""The images INT8 is calibrated on: never random data, and one road for every model.

* ``--calib``: a set from ``edgepipe calibrate`` (checked against the model's input and recorded
  preprocessing), or images as ``--data`` takes them (a folder, an .npz with pixels ``x`` read
  through the model's preprocessing, or with ``inputs`` fed as they are), every one of which may
  calibrate: up to ``calibration.DEFAULT_NUM`` drawn, class by class when labelled;
* else the one class-balanced draw (``calibration.draw``) from the calibration pool of the model's
  data (``--data``, or the data the model records). A model with neither is one clear error:
  calibrating on random inputs, which ModelOpt would do silently, gives scales that fit no image.

The record names the source, the count and the sha256: of the set (``CalibrationSet.sha256``;
for a drawn set too), or of the images' identity (``ImageSource.sha256``).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import calibration
from pipeline.errors import EdgepipeError
from pipeline.images import ModelData, ModelInput, open_source
from pipeline.quantize.compare import Images, check_fits
from pipeline.quantize.source import Fp32Source

_EDGEPIPE_SET = {"images", "manifest"}  # the arrays of a set written by `edgepipe calibrate`


def calibration_images(
    calib: Any, model_data: ModelData | None, source: Fp32Source, model_input: ModelInput, reading: dict[str, Any]
) -> tuple[Images, dict[str, Any]]:
    """Calibration images for ``source`` and their record (source, count, sha256); see the module's docstring."""
    if calib is None and model_data is None:
        raise EdgepipeError(
            f"--int8 needs calibration images: {source.path.name} records no data to draw them from "
            "(edgepipe never calibrates on random data)",
            fix="pass --calib with 64 or more of your images (a folder, an .npz with x or inputs, or a set from "
            "'edgepipe calibrate'), or --data with your images",
        )
    if calib is None:
        calib_set = calibration.draw(
            model_data, source.path, calibration.DEFAULT_NUM, seed=0, workers=reading["workers"]
        )
        where = f"the calibration pool of {Path(model_data.source.spec).name}"
        images, sha256 = (
            Images(
                calib_set.images,
                calib_set.labels,
                "calibration",
                f"{len(calib_set)} calibration images drawn from {where}",
            ),
            calib_set.sha256,
        )
        where = f"drawn from {where}"
    elif isinstance(calib, calibration.CalibrationSet) or _is_edgepipe_set(calib):
        calib_set = calib if isinstance(calib, calibration.CalibrationSet) else calibration.load(calib)
        calibration.check_matches(calib_set, model_input, shape_only=model_input.origin == "default")
        where = calib_set.manifest.get("path", "a calibration set")
        images = Images(
            calib_set.images,
            calib_set.labels,
            "calibration",
            f"{len(calib_set)} calibration images from {Path(where).name}",
        )
        sha256 = calib_set.sha256
    else:
        images, sha256, where = _given_images(calib, model_input, reading), calibration_sha256(calib), str(calib)
    if source.info.dynamic_hw and source.size is None and images.x.ndim == 4:
        h_axis, w_axis = source.info.hw_axes
        source.fix_size((images.x.shape[h_axis], images.x.shape[w_axis]), "--calib")
    check_fits(source.info, images.x, source.sample_shape, "--calib" if calib is not None else "--data")
    if len(images) < calibration.MIN_TOTAL:
        raise EdgepipeError(
            f"there are {len(images)} calibration images; INT8 needs at least {calibration.MIN_TOTAL} for stable ranges",
            fix=f"give {calibration.MIN_TOTAL} or more images (--calib, or --data with more images)",
        )
    return images, {"source": where, "count": len(images), "sha256": sha256}


def _given_images(calib: Any, model_input: ModelInput, reading: dict[str, Any]) -> Images:
    """Images given as ``--calib`` (a folder or an .npz): every one may calibrate; up to DEFAULT_NUM, drawn seeded."""
    images = open_source(str(calib), labels=reading["labels"], num_classes=model_input.num_classes)
    if not images.preprocessed:
        model_input.require_size()
    picked = images.draw(range(len(images)), calibration.DEFAULT_NUM, seed=0)
    x, y = images.batches(model_input.preprocess, picked, workers=reading["workers"], progress="calibration").collect()
    of = f" (seeded draw of {len(images):,})" if len(picked) < len(images) else ""
    return Images(x, y, "calibration", f"{len(picked):,} calibration images from {Path(str(calib)).name}{of}")


def calibration_sha256(calib: Any) -> str:
    """The sha256 the INT8 stage records for ``calib``: a set's content, or the images' identity."""
    if isinstance(calib, calibration.CalibrationSet):
        return calib.sha256
    if _is_edgepipe_set(calib):
        return calibration.load(calib).sha256
    return open_source(str(calib)).sha256


def _is_edgepipe_set(calib: Any) -> bool:
    path = Path(calib)
    if not path.is_file():
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return _EDGEPIPE_SET <= {Path(name).stem for name in archive.namelist()}
    except (OSError, zipfile.BadZipFile):
        return False
