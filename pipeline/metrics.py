"""Top-1 and a logit comparison of whole arrays (``pipeline.fidelity`` compares any model, batch by batch)."""

from __future__ import annotations

import numpy as np


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
