"""Golden inputs and outputs: held-out images through the FP32 model on ONNX Runtime, in Polygraphy's formats.

On the device, with no edgepipe installed, Polygraphy checks a model or the engine built there:

    polygraphy run model.fp16.engine --trt --load-inputs golden_inputs.json \\
        --load-outputs golden_outputs.json --atol 0.05 --rtol 0.05

``golden_inputs.json`` is what ``polygraphy run --save-inputs`` writes (a list of feed dicts, one per
iteration); ``golden_outputs.json`` what ``--save-outputs`` writes (``RunResults``). Each
iteration holds one batch of the engine's smallest profile batch (or the model's static batch).
``TOLERANCES`` are per precision, against the FP32 outputs (elementwise: a value fails when it
is off by more than both atol and rtol x |golden|).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.deploy.model import DeployModel
from pipeline.errors import EdgepipeError
from pipeline.images import SPLIT_SEED, VAL_FRACTION, open_source
from pipeline.onnxinfo import run_onnxruntime
from pipeline.precision import Precision

INPUTS, OUTPUTS = "golden_inputs.json", "golden_outputs.json"
RUNNER = "golden-fp32-onnxruntime"
# FP32 engines may use TF32 (10-bit mantissa) in convolutions; FP16 and INT8 are judged against FP32.
TOLERANCES = {
    Precision.FP32: {"atol": 5e-3, "rtol": 5e-3},
    Precision.FP16: {"atol": 5e-2, "rtol": 5e-2},
    Precision.INT8: {"atol": 0.3, "rtol": 0.1},
}


def held_out_images(model: DeployModel, data: str, count: int, labels: str | None = None) -> np.ndarray:
    """``count`` held-out images of ``data`` (never calibrated on), preprocessed for ``model``: N x sample_shape."""
    classes = len(model.class_names) if model.class_names else None
    source = open_source(data, labels=labels, num_classes=classes if model.is_classifier else None)
    indices = source.split(seed=SPLIT_SEED, val_fraction=VAL_FRACTION).held_out[:count]  # the split every stage uses
    if len(indices) == 0:
        raise EdgepipeError(f"{data} has no held-out images", fix="pass --data with at least 5 images")
    arrays = []
    for index in indices:
        image = source.read(int(index))
        pre = model.preprocess
        arrays.append(pre.apply(image) if isinstance(image, Image.Image) else pre.apply_array(np.asarray(image)))
    return np.stack(arrays).astype(np.float32)


def iterations(model: DeployModel, images: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Feed dicts of the model's static batch (or batch 1), in its input dtype."""
    batch = model.batch or 1
    usable = len(images) - len(images) % batch
    if usable == 0:
        raise EdgepipeError(
            f"{len(images)} held-out images for a model with a static batch of {batch}",
            fix=f"pass --images {batch} or more, with data that has as many held-out images",
        )
    dtype = np.dtype(model.input.dtype)
    return [{model.input_name: images[i : i + batch].astype(dtype)} for i in range(0, usable, batch)]


def write(folder: Path, fp32_model: str | Path, feeds: list[dict[str, np.ndarray]]) -> dict:
    """Write ``golden_inputs.json`` and ``golden_outputs.json`` (``fp32_model`` on ONNX Runtime) into ``folder``."""
    from polygraphy.comparator import RunResults  # Polygraphy writes its own formats; loaded only to write a bundle
    from polygraphy.comparator.struct import IterationResult
    from polygraphy.json import save_json
    from polygraphy.logger import G_LOGGER

    results = [
        IterationResult(run_onnxruntime(fp32_model, feed), runner_name=RUNNER) for feed in feeds
    ]  # fmt: skip
    run_results = RunResults()
    run_results.append((RUNNER, results))
    with G_LOGGER.verbosity(G_LOGGER.ERROR):  # Polygraphy logs each save on stdout, where --json results go
        save_json(feeds, str(folder / INPUTS))
        run_results.save(str(folder / OUTPUTS))
    return {"iterations": len(feeds), "images": sum(len(next(iter(f.values()))) for f in feeds)}


def nvinfer_feeds(model: DeployModel, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """The golden images as nvinfer feeds a folded model: ``x / 255``, the normalization undone (y * std + mean)."""
    pre, shape = model.preprocess, (1, -1, 1, 1) if model.layout == "nchw" else (1, 1, 1, -1)
    mean = np.asarray(pre.mean or (0.0,) * pre.channels, dtype=np.float32).reshape(shape)
    std = np.asarray(pre.std or (1.0,) * pre.channels, dtype=np.float32).reshape(shape)
    return [{name: (value * std + mean).astype(value.dtype) for name, value in feed.items()} for feed in feeds]


def check_command(artifact: str, runner: str, precision: Precision) -> str:
    """The Polygraphy command that checks ``artifact`` (an ONNX with ``--onnxrt``, an engine with ``--trt``)."""
    tol = TOLERANCES[precision]
    return (
        f"polygraphy run {artifact} {runner} --load-inputs {INPUTS} --load-outputs {OUTPUTS} "
        f"--atol {tol['atol']:g} --rtol {tol['rtol']:g}"
    )
