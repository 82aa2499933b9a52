"""Held-out figures of a converted edgepipe export against its FP32 source (which export proved equal to PyTorch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.data import load_for_config, split_of
from pipeline.metrics import evaluate
from pipeline.runner import predict
from pipeline.runtime.ort import OnnxRuntimeRunner

# The figures quantize returns and records in a manifest's "accuracy", in this order.
FIGURES = (
    "samples",
    "top1",
    "reference_top1",
    "delta",
    "agreement",
    "max_abs_diff",
    "mean_abs_diff",
    "median_abs_diff",
    "cosine",
    "cosine_min",
)


class HeldOut:
    """The model's held-out split and the FP32 model's logits on it, computed once per conversion.

    ``measure`` runs each candidate (FP16, or INT8 at each step of the budget search) through the
    shared evaluator, ``pipeline.metrics.evaluate``.
    """

    def __init__(self, onnx_path: str | Path, config: dict[str, Any], data: str | None):
        dataset = load_for_config(config, data)
        self.images, self.labels = split_of(config, dataset, "val")
        self.text = f"the {len(self.labels)} held-out images of {Path(dataset.source).name if data else config['data']['source']}"
        with OnnxRuntimeRunner(onnx_path) as runner:
            self.reference = predict(runner, self.images)

    def measure(self, model_bytes: bytes) -> dict[str, Any]:
        """samples, top1, reference_top1, delta (points), agreement (%) and the logit differences."""
        with OnnxRuntimeRunner(model_bytes) as runner:
            figures: dict[str, Any] = evaluate(runner, self.images, self.reference, self.labels)
        figures["agreement"] = figures.pop("top1_agreement")
        return {name: figures[name] for name in FIGURES}

    def record(self) -> dict[str, Any]:
        return {"on": "held-out", "images": int(len(self.labels)), "labelled": True, "text": self.text, "hint": ""}
