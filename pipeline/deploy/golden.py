"""Golden inputs and outputs: held-out images through the FP32 model on ONNX Runtime, in Polygraphy's formats.

On the device, with no edgepipe installed, Polygraphy checks a model or the engine built there:

    polygraphy run model.fp16.engine --trt --load-inputs golden_inputs.json \\
        --load-outputs golden_outputs.json --atol 0.05 --rtol 0.05

``golden_inputs.json`` is what ``polygraphy run --save-inputs`` writes (a list of feed dicts, one per
iteration); ``golden_outputs.json`` what ``--save-outputs`` writes (``RunResults``). Each
iteration holds one batch of the engine's smallest profile batch (or the model's static batch).
``TOLERANCES`` are per precision, against the FP32 outputs (elementwise: a value fails when it
is off by more than both atol and rtol x |golden|). ``read`` loads them back with the bundle's record
(``edgepipe validate BUNDLE MODEL`` on the device).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.deploy.model import DeployModel
from pipeline.errors import EdgepipeError
from pipeline.images import SPLIT_SEED, VAL_FRACTION, open_source
from pipeline.onnxinfo import run_onnxruntime
from pipeline.precision import Precision

INPUTS, OUTPUTS, TOLERANCES_FILE, RECORD = "golden_inputs.json", "golden_outputs.json", "tolerances.json", "bundle.json"
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


@dataclass(frozen=True)
class Golden:
    """A bundle's golden feeds and FP32 outputs (one dict per iteration), its tolerances and its record."""

    folder: Path  # where golden_inputs.json and golden_outputs.json are (the bundle, or its deepstream/)
    bundle: Path  # the folder of bundle.json
    feeds: list[dict[str, np.ndarray]]
    outputs: list[dict[str, np.ndarray]]
    tolerances: dict[str, dict[str, float]]
    record: dict

    def models(self) -> dict[str, str]:
        """The ONNX files these outputs judge (their names in the bundle) -> sha256, from the bundle's record."""
        here = self.folder.relative_to(self.bundle)
        digests = self.record.get("sha256") or {}
        return {
            name: digest for name, digest in digests.items() if name.endswith(".onnx") and Path(name).parent == here
        }


def read(path: str | Path) -> Golden:
    """The golden outputs of a bundle folder (or of the folder of ``golden_outputs.json``), checked complete."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    bundle = next((f for f in (folder, folder.parent) if (f / RECORD).is_file()), None)
    missing = [name for name in (INPUTS, OUTPUTS) if not (folder / name).is_file()]
    if missing or bundle is None or not (bundle / TOLERANCES_FILE).is_file():
        lacking = ", ".join(missing or [RECORD if bundle is None else TOLERANCES_FILE])
        raise EdgepipeError(
            f"{path} is not a bundle's golden outputs (no {lacking} there)",
            fix="pass the folder edgepipe package wrote (or its golden_outputs.json), complete",
        )
    from polygraphy.comparator import RunResults  # Polygraphy reads its own formats; loaded only to check a model
    from polygraphy.json import load_json
    from polygraphy.logger import G_LOGGER

    try:
        with G_LOGGER.verbosity(G_LOGGER.ERROR):  # Polygraphy logs each load on stdout, where --json results go
            feeds = [dict(feed) for feed in load_json(str(folder / INPUTS))]
            outputs = [dict(result) for result in RunResults.load(str(folder / OUTPUTS))[0][1]]
        tolerances = json.loads((bundle / TOLERANCES_FILE).read_text())
        record = json.loads((bundle / RECORD).read_text())
    except Exception as exc:  # truncated or hand-edited JSON, another tool's file
        raise EdgepipeError(
            f"cannot read the golden files in {folder} ({type(exc).__name__}: {str(exc).strip()[:160]})",
            fix="copy the bundle again (sha256sum -c SHA256SUMS says which file changed)",
        )
    if len(feeds) != len(outputs):
        raise EdgepipeError(
            f"{folder} has {len(feeds)} golden inputs for {len(outputs)} outputs",
            fix="copy the bundle again (sha256sum -c SHA256SUMS says which file changed)",
        )
    return Golden(folder, bundle, feeds, outputs, tolerances, record)
