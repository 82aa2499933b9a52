"""Foreign models whose predictions depend on their input, for INT8 accuracy budget tests and benchmarks.

The seeded models of ``foreign_models`` have biases as large as their weights, so their features
hardly change with the input and they predict one or two classes for any image: argmax agreement
says little about them. These variants keep the architectures and change only weights:

* ``export_varied_classifier``: the SE classifier with biases scaled down and a head centred on
  the features' mean, so that its ten classes are all predicted;
* ``export_outlier_recognizer``: the CRNN text recognizer, varied the same way, whose attention
  LayerNorm has a few outlier channels (a gain of 200, as trained transformers have). Per-tensor
  INT8 of the classifier's input then rounds away the small channels that carry the prediction:
  plain PTQ agrees with FP32 at about a third of the positions.

``images(shape, count, seed)`` gives inputs for them (seeded standard normal, float32).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from foreign_models import TEXT_SHAPE, SEClassifier, TextRecognizer, _batch_axes, _export, _seeded, random_images

CLASSIFIER_SHAPE = (3, 224, 224)
OUTLIER_GAIN = 200.0
OUTLIER_CHANNELS = 4
# The attention branch's weight against its residual: at full weight the near-uniform attention of a
# seeded model adds the same vector to every position, and the positions become alike.
ATTENTION_BRANCH = 0.1


def images(shape, count: int, seed: int = 0) -> np.ndarray:
    return random_images(shape, count, seed)


def _scale_biases(module: torch.nn.Module, factor: float) -> None:
    for layer in module.modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)) and layer.bias is not None:
            layer.bias.mul_(factor)


def _centre_head(model: torch.nn.Module, head: torch.nn.Linear, example: torch.Tensor) -> None:
    """Make ``head``'s logits zero-mean, unit-variance on ``example``: the input, not the biases, decides."""
    features = []
    hook = head.register_forward_hook(lambda module, inputs, output: features.append(inputs[0].detach()))
    model(example)
    hook.remove()
    flat = features[0].reshape(-1, features[0].shape[-1])
    logits = flat @ head.weight.T
    head.weight.mul_(1.0 / logits.std())
    head.bias.copy_(-(flat.mean(0) @ head.weight.T))


def export_varied_classifier(path, opset: int = 17, seed: int = 0) -> Path:
    """The SE classifier (input "image" N x 3 x 224 x 224, output "logits" N x 10) predicting every class."""
    model = _seeded(SEClassifier(), seed)
    with torch.no_grad():
        _scale_biases(model, 0.1)
        _centre_head(model, model.head, torch.from_numpy(images(CLASSIFIER_SHAPE, 16, seed=100)))
    return _export(
        model,
        path,
        (torch.randn(1, *CLASSIFIER_SHAPE),),
        ["image"],
        ["logits"],
        _batch_axes(["image", "logits"], "dynamic"),
        opset,
    )


def export_outlier_recognizer(path, opset: int = 17, seed: int = 0) -> Path:
    """The text recognizer ("image" N x 1 x 32 x 128 -> "char_logits" N x 32 x 37) with outlier LayerNorm channels."""
    model = _seeded(TextRecognizer(), seed)
    with torch.no_grad():
        _scale_biases(model, 0.1)
        model.attention.out.weight.mul_(ATTENTION_BRANCH)
        _centre_head(model, model.classify, torch.from_numpy(images(TEXT_SHAPE, 16, seed=100)))
        model.attention.norm.weight[:OUTLIER_CHANNELS] = OUTLIER_GAIN
        model.classify.weight[:, :OUTLIER_CHANNELS] /= OUTLIER_GAIN
    return _export(
        model,
        path,
        (torch.randn(1, *TEXT_SHAPE),),
        ["image"],
        ["char_logits"],
        _batch_axes(["image", "char_logits"], "dynamic"),
        opset,
    )
