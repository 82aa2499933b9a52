"""A DeepStream ``nvinfer`` config for a bundle's engine: keys of nvinfer's parser only, its arithmetic stated.

``NVINFER_KEYS`` lists the ``[property]`` keys this writer may use, each a ``CONFIG_GROUP_INFER_*``
key of DeepStream's ``gstnvinfer_property_parser.h`` (DeepStream SDK API reference, 6.4 to 9.x:
``labelfile-path``, ``gpu-id``, ``enable-dla``, ``use-dla-core``, ``net-scale-factor``, ``offsets``,
``model-color-format``, ``network-mode``, ``network-type``, ``onnx-file``, ``model-engine-file``,
``int8-calib-file``, ``batch-size``, ``gie-unique-id``, ``process-mode``, ``output-blob-names``,
``classifier-threshold``, ``network-input-order``, ``maintain-aspect-ratio``,
``symmetric-padding``, ``infer-dims``, ``output-tensor-meta``). nvinfer only warns on an unknown key, so a typo there is a
silent default: the tests check every key written is in this list.

What nvinfer does, and what the config says about it in its comments:
- ``y = net-scale-factor * (x - offsets[c])`` on 0-255 pixels, one scale for all channels
  (``fold.scaling``); ``model-color-format`` 0 RGB, 1 BGR, 2 GRAY;
- no centre crop: frames (or objects) are squashed to the input size, or letterboxed with
  ``maintain-aspect-ratio``: a model trained with a crop sees more of the image;
- ``network-mode`` 0 FP32, 1 INT8, 2 FP16; with 1 and no ``int8-calib-file`` it builds FP16,
  silently, whenever the engine will not load and it rebuilds from ``onnx-file``;
- a classifier's ``labelfile-path`` holds ALL classes on one line separated by ``;`` (one name a
  line reads as N one-class attributes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.deploy.fold import SOFTMAX_OUTPUT, NvinferScaling, scaling
from pipeline.deploy.model import DeployModel
from pipeline.onnxinfo import run_onnxruntime
from pipeline.precision import Precision

NVINFER_KEYS = frozenset(
    {
        "gpu-id", "gie-unique-id", "process-mode", "net-scale-factor", "offsets", "model-color-format",
        "onnx-file", "model-engine-file", "int8-calib-file", "labelfile-path", "batch-size", "network-mode",
        "network-type", "output-blob-names", "classifier-threshold", "network-input-order",
        "maintain-aspect-ratio", "symmetric-padding", "infer-dims", "enable-dla", "use-dla-core", "output-tensor-meta",
    }
)  # fmt: skip
NETWORK_MODE = {Precision.FP32: 0, Precision.INT8: 1, Precision.FP16: 2}
COLOR_FORMAT = {"rgb": 0, "bgr": 1, "gray": 2}
NETWORK_TYPE_CLASSIFIER, NETWORK_TYPE_OTHER = 1, 100  # 100: output tensors only (output-tensor-meta)


@dataclass(frozen=True)
class NvinferFiles:
    """Paths as the config names them, relative to the config file."""

    onnx: str
    engine: str
    labels: str | None
    output: str = SOFTMAX_OUTPUT  # the classifier's probabilities output in the DeepStream ONNX


def nvinfer_config(
    model: DeployModel, precision: Precision, files: NvinferFiles, scale: NvinferScaling, batch_size: int = 1
) -> str:
    """The ``[property]`` group for ``model``'s engine at ``precision``."""
    color = "gray" if model.channels == 1 else model.preprocess.channel_order
    comments = [f"nvinfer config for {model.path.name} ({precision.value}), written by edgepipe package.", scale.note()]
    if model.preprocess.crop:
        comments.append(
            f"The model was made with a centre crop ({model.preprocess.describe()}); nvinfer does no centre crop: "
            "it squashes each frame or object to the input size, so crop upstream (nvvideoconvert src-crop, or "
            "nvdspreprocess) or expect lower accuracy."
        )
    properties = {
        "gpu-id": 0,
        "gie-unique-id": 1,
        "process-mode": 1,
        "net-scale-factor": repr(scale.net_scale_factor),
        "offsets": ";".join(f"{v:g}" for v in scale.offsets),
        "model-color-format": COLOR_FORMAT[color],
        "network-input-order": 0 if model.layout == "nchw" else 1,
        "model-engine-file": files.engine,
        "batch-size": batch_size,
        "network-mode": NETWORK_MODE[precision],
    }
    if precision == Precision.INT8:
        comments.append(
            "INT8 here is explicit (Q/DQ nodes in the ONNX), built strongly typed by build.sh. With network-mode=1 "
            "and no int8-calib-file, nvinfer would rebuild a failed engine as FP16, silently: onnx-file is left "
            "out, so an engine that will not load is an error. Rebuild it with build.sh."
        )
    else:
        comments.append("If model-engine-file will not load, nvinfer rebuilds it from onnx-file: run build.sh instead.")
        properties["onnx-file"] = files.onnx
    if model.is_classifier:
        properties.update({"network-type": NETWORK_TYPE_CLASSIFIER, "classifier-threshold": 0.0})
        properties["output-blob-names"] = files.output
        if files.labels:
            properties["labelfile-path"] = files.labels
    else:
        properties.update({"network-type": NETWORK_TYPE_OTHER, "output-tensor-meta": 1})
    lines = [f"# {line}" for line in comments] + ["[property]"]
    return "\n".join(lines + [f"{key}={value}" for key, value in properties.items()]) + "\n"


def labels_line(class_names: tuple[str, ...]) -> str:
    """A classifier's labels file for nvinfer: every class on ONE line, separated by ``;``."""
    return ";".join(name.replace(";", ",") for name in class_names) + "\n"


def parse_config(text: str) -> dict[str, str]:
    """The ``[property]`` keys of an nvinfer config (the GKeyFile syntax nvinfer reads)."""
    values: dict[str, str] = {}
    group = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            group = line.strip("[]")
        elif group == "property":
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def unfolded_cost(model: DeployModel, scaled_feeds: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """What one scale costs a model whose ONNX keeps its normalization, measured on images.

    ``scaled_feeds`` hold ``x / 255`` (ToTensor's pixels). Each is fed to ``model`` twice: normalized
    exactly, and as nvinfer would with one scale and per-channel offsets. Returns the largest
    absolute difference of the first output and, for a classifier, the share of images whose
    top-1 class stays the same.
    """
    approx = scaling(model.preprocess, folded=False)
    shape = (1, -1, 1, 1) if model.layout == "nchw" else (1, 1, 1, -1)
    offsets = np.asarray(approx.offsets, dtype=np.float32).reshape(shape)
    diffs, same, count = [], 0, 0
    for feed in scaled_feeds:
        x = next(iter(feed.values()))
        exact = run_onnxruntime(model.path, model.preprocess.scale(x))[model.outputs[0].name]
        nvinfer = np.float32(approx.net_scale_factor) * (x * np.float32(255) - offsets)
        got = run_onnxruntime(model.path, nvinfer.astype(x.dtype))[model.outputs[0].name]
        diffs.append(float(np.max(np.abs(got - exact))))
        if model.is_classifier:
            same += int(np.sum(got.argmax(1) == exact.argmax(1)))
            count += len(got)
    cost = {"max_scale_error": approx.max_scale_error, "max_abs_diff": max(diffs)}
    return {**cost, "top1_agreement": same / count} if count else cost
