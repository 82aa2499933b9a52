"""The images INT8 is calibrated on: never random data.

* edgepipe's own exports: ``--calib`` (a set from ``edgepipe calibrate``) or, without it, a set
  drawn from the model's recorded training split, as before;
* any other model: ``--calib`` (a set from ``edgepipe calibrate``, or an .npz with ``x`` already
  preprocessed in the model's layout, and optionally ``y``) or the calibration pool of ``--data``.
  Without either it is one clear error: there is no training data to draw from, and calibrating
  on random inputs, which ModelOpt would do silently, gives scales that fit no real image.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

import calibration
from pipeline.errors import EdgepipeError
from pipeline.images import open_source as open_images
from pipeline.progress import info as say
from pipeline.quantize.checks import Images, check_fits, folder_calibration, read_npz
from pipeline.quantize.source import Source

_EDGEPIPE_SET = {"images", "labels", "manifest"}  # the arrays of a set written by `edgepipe calibrate`


def zoo_calibration(calib: Any, config: dict[str, Any]) -> calibration.CalibrationSet:
    """The calibration set of an edgepipe export: ``calib``, or drawn from its training split; checked against it."""
    if calib is None:
        say(
            f"No --calib given: drawing {calibration.DEFAULT_NUM} calibration images from the model's training split ({config['data']['source']})"
        )
        calib_set = calibration.draw(config, num=calibration.DEFAULT_NUM, seed=0)
    elif isinstance(calib, calibration.CalibrationSet):
        calib_set = calib
    else:
        calib_set = calibration.load(calib)
        calib_set.manifest = {**calib_set.manifest, "path": str(calib)}
    calibration.check_matches(calib_set, config)
    return calib_set


def foreign_calibration(
    calib: Any, pool: Images | None, source: Source, flag: str = "--int8", reading: dict[str, Any] | None = None
) -> tuple[Images, dict[str, Any]]:
    """Calibration images for a model edgepipe did not export, and their record (source, count, sha256).

    From ``calib`` (a CalibrationSet, an edgepipe set, an .npz with x, or a folder of images read
    through the model's preprocessing with ``reading``: preprocess, labels, workers), else drawn from the
    calibration pool of ``--data``; neither is one clear error. The images must fit the model's input.
    """
    info = source.info
    if calib is None and pool is None:
        raise EdgepipeError(
            f"{flag} needs calibration images: {source.path} has no edgepipe metadata, so there is no training data to draw them from "
            "(edgepipe never calibrates on random data)",
            fix="pass --calib with 64 or more of your images (a folder, an .npz with x preprocessed for the model in its layout, or a set from "
            "'edgepipe calibrate'), or --data with your images",
        )
    if calib is None:
        count = min(len(pool), calibration.DEFAULT_NUM)
        picked = np.sort(np.random.default_rng(0).permutation(len(pool))[:count])
        images = Images(
            pool.x[picked],
            None if pool.y is None else pool.y[picked],
            "calibration",
            f"{count} calibration images drawn from {pool.text}",
        )
        where = f"drawn from {pool.text}"
    elif _is_folder(calib):
        images = folder_calibration(Path(calib), source.model, **(reading or {}))
        images.what, where = "calibration", str(calib)
    else:
        x, y, where = _read(calib)
        images = Images(x, y, "calibration", f"{len(x)} calibration images from {Path(where).name}")
    if source.info.dynamic_hw and source.size is None and images.x.ndim == 4:
        h_axis, w_axis = info.hw_axes
        source.fix_size((images.x.shape[h_axis], images.x.shape[w_axis]), "--calib")
    check_fits(info, images.x, source.sample_shape, "--calib" if calib is not None else "--data")
    least = calibration.MIN_TOTAL
    if len(images) < least:
        raise EdgepipeError(
            f"there are {len(images)} calibration images; INT8 needs at least {least} for stable ranges",
            fix=f"give {least} or more images (--calib, or --data with more images)",
        )
    sha256 = calibration_sha256(calib) if _is_folder(calib) else content_sha256(images.x, images.y)
    record = {
        "source": where,
        "count": len(images),
        "sha256": sha256,
        **({"preprocess": images.extra["preprocess"]} if images.extra else {}),
    }
    return images, record


def calibration_sha256(calib: Any) -> str:
    """The content sha256 of a calibration set or .npz, as the INT8 stage records it."""
    if isinstance(calib, calibration.CalibrationSet):
        return calib.sha256
    if _is_folder(calib):  # the folder's identity (file list, sizes, times); its preprocessing is recorded beside it
        return open_images(str(calib)).sha256
    if _is_edgepipe_set(Path(calib)):
        return calibration.load(calib).sha256
    x, y, _ = _read(calib)
    return content_sha256(x, y)


def content_sha256(x: np.ndarray, y: np.ndarray | None) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(x).tobytes())
    if y is not None:
        digest.update(np.ascontiguousarray(y, dtype=np.int64).tobytes())
    return digest.hexdigest()


def _read(calib: Any) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Images, labels (or None) and a description of ``calib``: a CalibrationSet or an .npz of either form."""
    if isinstance(calib, calibration.CalibrationSet):
        return calib.images, calib.labels, calib.manifest.get("path", "a calibration set")
    path = Path(calib)
    if not path.is_file():
        raise EdgepipeError(
            f"calibration set {path} does not exist",
            fix="pass an .npz with x (images preprocessed for the model), or a set from 'edgepipe calibrate'",
        )
    if _is_edgepipe_set(path):
        calib_set = calibration.load(path)
        return calib_set.images, calib_set.labels, str(path)
    x, y = read_npz(path, "--calib")
    return x, y, str(path)


def _is_folder(calib: Any) -> bool:
    return isinstance(calib, (str, Path)) and Path(calib).is_dir()


def _is_edgepipe_set(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return _EDGEPIPE_SET <= {Path(name).stem for name in archive.namelist()}
    except (OSError, zipfile.BadZipFile):
        return False
