"""Small ONNX classifiers for the deploy tests, exported here from a torch module outside the zoo.

``classifier(folder, ...)``: a conv + squeeze-excite + linear classifier (3x32x32 RGB by default),
seeded, with its preprocessing (resize, centre crop, ImageNet mean/std) and class names stored in
the ONNX metadata the way edgepipe's export stores them. ``qdq_on_input``: an INT8 Q/DQ model of it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from pipeline.images import Record
from pipeline.preprocess import Preprocess

CLASSES = ("cat", "dog", "bird", "fish", "frog")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class TinyClassifier(nn.Module):
    def __init__(self, channels: int = 3, classes: int = len(CLASSES)):
        super().__init__()
        self.conv = nn.Conv2d(channels, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.gate = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, classes)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        y = y * torch.sigmoid(self.gate(y.mean(dim=(2, 3), keepdim=True)))
        return self.head(y.mean(dim=(2, 3)))


def classifier(
    folder: Path, name: str = "model.onnx", channels: int = 3, size: int = 32, dynamic_batch: bool = True, **pre
) -> Path:
    """Export a seeded TinyClassifier to ``folder/name`` with preprocessing and class names in its metadata."""
    torch.manual_seed(0)
    net = TinyClassifier(channels).eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 1.5)
    path = Path(folder) / name
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    torch.onnx.export(
        net, torch.zeros(1, channels, size, size), str(path), input_names=["input"], output_names=["logits"],
        dynamic_axes=axes, opset_version=17, dynamo=False,
    )  # fmt: skip
    model = onnx.load(str(path))
    defaults = {"resize": size + 4, "crop": (size, size), "mean": MEAN, "std": STD} if channels == 3 else {}
    Record(Preprocess(**{**defaults, **pre, "channels": channels})).store_in(model)
    model.metadata_props.add(key="edgepipe.class_names", value=json.dumps(list(CLASSES)))
    onnx.save(model, str(path))
    return path


def images_npz(folder: Path, count: int = 40, size: int = 40, channels: int = 3, seed: int = 0) -> Path:
    """An .npz of seeded uint8 images with labels, as users bring them."""
    rng = np.random.default_rng(seed)
    shape = (count, size, size, channels) if channels == 3 else (count, size, size)
    path = Path(folder) / "images.npz"
    np.savez(path, x=rng.integers(0, 256, shape, dtype=np.uint8), y=rng.integers(0, len(CLASSES), count))
    return path


def qdq_on_input(source: Path, path: Path) -> Path:
    """``source`` with a symmetric INT8 QuantizeLinear/DequantizeLinear on its input: a Q/DQ model."""
    model = onnx.load(str(source))
    for node in model.graph.node:
        node.input[:] = ["input_dq" if value == "input" else value for value in node.input]
    scale, zero = numpy_helper.from_array(np.float32(0.05), "s"), numpy_helper.from_array(np.int8(0), "z")
    model.graph.initializer.extend([scale, zero])
    model.graph.node.insert(0, helper.make_node("DequantizeLinear", ["input_q", "s", "z"], ["input_dq"]))
    model.graph.node.insert(0, helper.make_node("QuantizeLinear", ["input", "s", "z"], ["input_q"]))
    onnx.save(model, str(path))
    return path
