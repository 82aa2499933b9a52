"""Accuracy and agreement figures shared by export, quantize, validate and bench."""

from __future__ import annotations

import numpy as np

from pipeline.errors import EdgepipeError
from pipeline.runner import Runner, predict


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    return float((logits.argmax(axis=1) == labels).mean() * 100.0)


def compare_logits(reference: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Polygraphy-style error statistics of ``logits`` against the PyTorch ``reference``."""
    reference = reference.astype(np.float64)
    logits = logits.astype(np.float64)
    diff = np.abs(reference - logits)
    dot = (reference * logits).sum(axis=1)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(logits, axis=1)
    cosine = dot / np.maximum(norms, 1e-12)
    return {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "median_abs_diff": float(np.median(diff)),
        "top1_agreement": float((reference.argmax(axis=1) == logits.argmax(axis=1)).mean() * 100.0),
        "cosine": float(cosine.mean()),
        "cosine_min": float(cosine.min()),
    }


def evaluate(
    runner: Runner, images: np.ndarray, reference: np.ndarray, labels: np.ndarray | None = None
) -> dict[str, float]:
    """Run ``runner`` on ``images`` and measure it against the ``reference`` logits (and labels).

    The one held-out evaluator: export, quantize, validate and bench read their figures from it.
    """
    logits = predict(runner, images)
    if logits.shape != reference.shape:
        raise EdgepipeError(
            f"it returns outputs of shape {logits.shape}, the reference {reference.shape}",
            fix="pass artifacts made from the reference model",
        )
    figures: dict[str, float] = compare_logits(reference, logits)
    if labels is not None:
        value, reference_top1 = top1(logits, labels), top1(reference, labels)
        figures.update(
            top1=value, reference_top1=reference_top1, delta=value - reference_top1, samples=int(len(labels))
        )
    return figures
