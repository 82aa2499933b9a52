"""ONNX models edgepipe did not write, exported here from torch modules outside the model zoo.

Users bring ONNX files from timm, torchvision, PyPI packages and their own exporters: no edgepipe
metadata, older opsets, dynamic height/width, NHWC inputs, several outputs, sequence outputs.
These small models reproduce each of those traits so tests can take them through edgepipe on
ONNX Runtime CPU in well under a second per batch:

* ``export_se_classifier``: an SE-ResNet-style classifier at 3x224x224 (opset 11/12/17, dynamic
  H/W, NHWC input through a Transpose inside the model, H and W sharing one symbolic name, an
  extra embedding output);
* ``export_two_input_model``: an image and a class prior (edgepipe refuses it, naming both);
* ``export_text_recognizer``: a CRNN-like text recognizer, conv features and a self-attention
  block, 1x32x128 grayscale -> N x 32 x 37 per-position logits.

Weights are seeded, and batch-norm statistics are randomised so that every layer does work.
``foreign_model(kind, **options)`` exports each variant once per test process.
"""

from __future__ import annotations

import atexit
import functools
import math
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

NUM_CLASSES = 10
EMBEDDING_SIZE = 32
TEXT_SHAPE = (1, 32, 128)  # grayscale text line, C x H x W
TEXT_STEPS, TEXT_CLASSES = 32, 37  # 26 letters + 10 digits + blank


# --- torch modules --------------------------------------------------------------------------------


class SqueezeExcite(nn.Module):
    """Channel attention: a sigmoid gate per channel from the spatial mean (ReduceMean, works at any H/W)."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels // reduction, 1)
        self.expand = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.expand(torch.relu(self.reduce(x.mean(dim=(2, 3), keepdim=True)))))
        return x * gate


class SEBasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.se = SqueezeExcite(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.se(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))
        return torch.relu(y + self.shortcut(x))


class SEClassifier(nn.Module):
    """Stem (stride 4) and three SE blocks (16, 32, 64 channels): about 40 M MACs at 224x224."""

    def __init__(self, num_classes: int = NUM_CLASSES, nhwc: bool = False, embedding: bool = False):
        super().__init__()
        self.nhwc, self.embedding = nhwc, embedding
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        )
        self.blocks = nn.Sequential(SEBasicBlock(16, 16, 1), SEBasicBlock(16, 32, 2), SEBasicBlock(32, 64, 2))
        self.head = nn.Linear(64, num_classes)
        self.project = nn.Linear(64, EMBEDDING_SIZE) if embedding else None

    def forward(self, x: torch.Tensor):
        if self.nhwc:
            x = x.permute(0, 3, 1, 2)  # a Transpose inside the graph, as TensorFlow-born models have
        features = self.blocks(self.stem(x))
        # GlobalAveragePool + Squeeze: Squeeze takes its axes as an attribute before opset 13.
        pooled = nn.functional.adaptive_avg_pool2d(features, 1).squeeze(-1).squeeze(-1)
        logits = self.head(pooled)
        return (logits, self.project(pooled)) if self.embedding else logits


class TwoInputClassifier(nn.Module):
    """An image and a per-class prior added to the logits: not a single-image-input model."""

    def __init__(self):
        super().__init__()
        self.classifier = SEClassifier()

    def forward(self, image: torch.Tensor, class_prior: torch.Tensor) -> torch.Tensor:
        return self.classifier(image) + class_prior


class SelfAttention(nn.Module):
    """Multi-head self-attention over the time steps, with a residual and LayerNorm."""

    def __init__(self, dim: int, heads: int = 4):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.head_dim), dim=-1)
        attended = (weights @ v).transpose(1, 2).reshape(n, t, d)
        return self.norm(x + self.out(attended))


class TextRecognizer(nn.Module):
    """CRNN-like: conv features (height pooled away) -> self-attention -> per-step class logits."""

    def __init__(self, classes: int = TEXT_CLASSES):
        super().__init__()

        def conv(cin, cout, pool):
            return [
                nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.MaxPool2d(pool, pool),
            ]

        # 32x128 -> 16x64 -> 8x32 -> 4x32 (then the height is averaged away: 32 steps)
        self.features = nn.Sequential(
            *conv(1, 32, 2), *conv(32, 64, 2), *conv(64, 96, (2, 1)), nn.Conv2d(96, 128, 3, 1, 1), nn.ReLU()
        )
        self.attention = SelfAttention(128)
        self.classify = nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sequence = self.features(x).mean(dim=2).permute(0, 2, 1)  # N x T x 128
        return self.classify(self.attention(sequence))


def _seeded(module: nn.Module, seed: int) -> nn.Module:
    """Deterministic weights, and batch-norm statistics that are not the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(
                torch.randn(parameter.shape, generator=generator) * (1.0 / math.sqrt(max(parameter[0].numel(), 1)))
            )
        for layer in module.modules():
            if isinstance(layer, nn.BatchNorm2d):
                size = layer.num_features
                layer.weight.copy_(1.0 + 0.1 * torch.randn(size, generator=generator))
                layer.bias.copy_(0.1 * torch.randn(size, generator=generator))
                layer.running_mean.copy_(0.1 * torch.randn(size, generator=generator))
                layer.running_var.copy_(0.5 + torch.rand(size, generator=generator))
            if isinstance(layer, nn.LayerNorm):
                layer.weight.fill_(1.0)
                layer.bias.zero_()
    return module.eval()


# --- exporters -------------------------------------------------------------------------------------


def _export(module: nn.Module, path, examples: tuple, input_names, output_names, dynamic_axes, opset: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        # The TorchScript exporter, as most ONNX files in the wild were made; no edgepipe metadata.
        torch.onnx.export(
            module,
            examples,
            str(path),
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes or None,
        )
    return path


def _batch_axes(names, batch) -> dict:
    return {name: {0: "batch"} for name in names} if batch == "dynamic" else {}


def export_se_classifier(
    path,
    opset: int = 17,
    dynamic_hw: bool = False,
    nhwc: bool = False,
    batch="dynamic",
    embedding: bool = False,
    shared_hw: bool = False,
    seed: int = 0,
) -> Path:
    """An SE-ResNet-style classifier, input "image" 1x3x224x224 (or 1x224x224x3 with ``nhwc``).

    ``batch``: "dynamic" or a fixed size. ``dynamic_hw``: height and width named "height" and
    "width"; ``shared_hw``: both named "size" (TensorRT then requires them equal).
    ``embedding``: a second output "embedding" (N x 32) beside "logits" (N x 10).
    """
    model = _seeded(SEClassifier(nhwc=nhwc, embedding=embedding), seed)
    n = 1 if batch == "dynamic" else int(batch)
    example = torch.randn(n, 224, 224, 3) if nhwc else torch.randn(n, 3, 224, 224)
    outputs = ["logits", "embedding"] if embedding else ["logits"]
    axes = _batch_axes(["image", *outputs], batch)
    if dynamic_hw or shared_hw:
        h_axis, w_axis = (1, 2) if nhwc else (2, 3)
        names = ("size", "size") if shared_hw else ("height", "width")
        axes.setdefault("image", {}).update({h_axis: names[0], w_axis: names[1]})
    return _export(model, path, (example,), ["image"], outputs, axes, opset)


def export_two_output_model(path, opset: int = 17, seed: int = 0) -> Path:
    """The SE classifier with outputs "logits" (N x 10) and "embedding" (N x 32)."""
    return export_se_classifier(path, opset=opset, embedding=True, seed=seed)


def export_shared_hw_model(path, opset: int = 17, seed: int = 0) -> Path:
    """The SE classifier whose input is ["batch", 3, "size", "size"]."""
    return export_se_classifier(path, opset=opset, shared_hw=True, seed=seed)


def export_two_input_model(path, opset: int = 17, seed: int = 0) -> Path:
    """Inputs "image" (N x 3 x 224 x 224) and "class_prior" (N x 10); output "logits"."""
    model = _seeded(TwoInputClassifier(), seed)
    examples = (torch.randn(1, 3, 224, 224), torch.randn(1, NUM_CLASSES))
    names = ["image", "class_prior"]
    return _export(model, path, examples, names, ["logits"], _batch_axes([*names, "logits"], "dynamic"), opset)


def export_text_recognizer(path, opset: int = 17, batch="dynamic", seed: int = 0, dynamic_hw: bool = False) -> Path:
    """CRNN-like recognizer: "image" N x 1 x 32 x 128 -> "char_logits" N x 32 x 37 (``dynamic_hw``: H and W named)."""
    model = _seeded(TextRecognizer(), seed)
    n = 1 if batch == "dynamic" else int(batch)
    axes = _batch_axes(["image", "char_logits"], batch)
    if dynamic_hw:
        axes = {
            "image": {**axes.get("image", {}), 2: "height", 3: "width"},
            "char_logits": {**axes.get("char_logits", {}), 1: "steps"},
        }
    return _export(model, path, (torch.randn(n, *TEXT_SHAPE),), ["image"], ["char_logits"], axes, opset)


EXPORTERS: dict[str, Callable[..., Path]] = {
    "se_classifier": export_se_classifier,
    "two_output": export_two_output_model,
    "shared_hw": export_shared_hw_model,
    "two_input": export_two_input_model,
    "text_recognizer": export_text_recognizer,
}


def fp16_with_autocast(source, output) -> Path:
    """The FP16 model ModelOpt AutoCast makes of ``source``, as edgepipe's --fp16 makes it (I/O stay FP32)."""
    import onnx
    from modelopt.onnx.autocast import convert_to_mixed_precision  # slow to import; only FP16 tests need it

    # --- edgepipe internals used here (re-point if they move) ---
    from pipeline.quantize import FP16_FP32_OPS

    converted = convert_to_mixed_precision(
        onnx_path=str(source),
        low_precision_type="fp16",
        keep_io_types=True,
        op_types_to_exclude=list(FP16_FP32_OPS),
        providers=["cpu"],
    )
    onnx.save(converted, str(output))
    return Path(output)


def random_images(shape, count: int, seed: int = 0) -> np.ndarray:
    """``count`` float32 images of ``shape`` (one sample, no batch), roughly normalized."""
    return np.random.default_rng(seed).standard_normal((count, *shape)).astype(np.float32)


_folder: list[Path] = []


@functools.cache
def foreign_model(kind: str, **options) -> Path:
    """``foreign_model(kind, **options)``: the path of that export, made once per test process.

    ``kind`` is a key of ``EXPORTERS``; options go to its function (opset, dynamic_hw, ...).
    The files live in one temporary folder, removed when the process exits; do not modify them.
    """
    if not _folder:
        _folder.append(Path(tempfile.mkdtemp(prefix="edgepipe-foreign-")))
        atexit.register(shutil.rmtree, _folder[0], True)
    label = "-".join([kind, *(f"{k}{v}" for k, v in sorted(options.items()))])
    return EXPORTERS[kind](_folder[0] / f"{label}.onnx", **options)
