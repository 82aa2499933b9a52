"""Fidelity of any model's outputs against a reference, streamed batch by batch.

A converted artifact is judged against its FP32 reference on every output the model has, not only
classifier logits; docs/foreign-onnx.md lists the figures. The accumulator keeps sums, extremes and
a handful of points per output, never the outputs, so memory stays flat however many batches go
through it. ``atol``/``rtol`` can still be chosen at ``result`` time: pass/fail depends only on the
upper convex hull of the (|reference|, |diff|) points, which is all that is kept of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.defaults import DEFAULT_ATOL, DEFAULT_RTOL
from pipeline.errors import EdgepipeError

_SAMPLE = 4096  # points of each batch that pre-screen the rest for the pass/fail hull


class Fidelity:
    """``update`` with each batch's reference and candidate outputs (same order as ``output_names``);
    ``result`` gives the figures per output, with the first output's also at the top level."""

    def __init__(self, output_names: Sequence[str]):
        if not output_names:
            raise EdgepipeError("fidelity needs at least one output name", fix="pass the model's output names")
        self.output_names = list(output_names)
        self._stats = [_OutputStats(name) for name in self.output_names]
        self._labelled = self._correct = self._reference_correct = 0

    def update(
        self, reference_outputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray], labels: np.ndarray | None = None
    ) -> None:
        # one array is the output of a model with one output
        reference_outputs, outputs = (
            [v] if isinstance(v, np.ndarray) else list(map(np.asarray, v)) for v in (reference_outputs, outputs)
        )
        count = len(self.output_names)
        if len(reference_outputs) != count or len(outputs) != count:
            raise EdgepipeError(
                f"expected {count} output(s) ({', '.join(self.output_names)}); got {len(reference_outputs)} from the reference and {len(outputs)} from the candidate",
                fix="compare models with the same outputs (an artifact converted from the reference model)",
            )
        # Check the whole batch before counting any of it, so a bad batch leaves the figures as they were.
        for name, reference, output in zip(self.output_names, reference_outputs, outputs):
            if reference.shape != output.shape:
                raise EdgepipeError(
                    f"output '{name}' has shape {output.shape}; the reference's is {reference.shape}",
                    fix="compare an artifact converted from the reference model, fed the same batch",
                )
        predicted = outputs[0].argmax(axis=-1) if labels is not None else None
        if labels is not None and np.shape(labels) != predicted.shape:
            raise EdgepipeError(
                f"labels of shape {np.shape(labels)} do not match output '{self.output_names[0]}' (argmax shape {predicted.shape})",
                fix="pass one class index per sample (per position for sequence outputs), in the order the images were fed",
            )
        for stats, reference, output in zip(self._stats, reference_outputs, outputs):
            stats.update(reference, output)
        if labels is not None:
            labels = np.asarray(labels)
            self._labelled += labels.size
            self._correct += int((predicted == labels).sum())
            self._reference_correct += int((reference_outputs[0].argmax(axis=-1) == labels).sum())

    def result(self, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL) -> dict[str, Any]:
        if atol < 0 or rtol < 0:
            raise EdgepipeError(
                f"--atol and --rtol must be 0 or more, got {atol:g} and {rtol:g}",
                fix="pass e.g. --atol 1e-3 --rtol 1e-3",
            )
        if self._stats[0].samples == 0:
            raise EdgepipeError("no outputs were compared (no batches)", fix="compare at least one image")
        per_output = {stats.name: stats.result(atol, rtol) for stats in self._stats}
        first = per_output[self.output_names[0]]
        figures: dict[str, Any] = {
            "samples": first["samples"],
            "atol": atol,
            "rtol": rtol,
            "passed": all(o["passed"] for o in per_output.values()),
            **{key: first[key] for key in ("max_abs_diff", "mean_abs_diff", "cosine", "cosine_min")},
            "top1_agreement": first["argmax_agreement"],
            "outputs": per_output,
        }
        if self._labelled:
            top1 = self._correct / self._labelled * 100.0  # as train computes it: the same figure, bit for bit
            reference_top1 = self._reference_correct / self._labelled * 100.0
            figures.update(
                labelled=self._labelled, top1=top1, reference_top1=reference_top1, delta=top1 - reference_top1
            )
        return figures


class _OutputStats:
    """Running figures of one output: sums, extremes, and the pass/fail hull."""

    def __init__(self, name: str):
        self.name = name
        self.sample_shape: tuple[int, ...] | None = None
        self.samples = self.elements = self.nonfinite = 0
        self.abs_sum, self.abs_max = 0.0, 0.0
        self.cosine_sum, self.cosine_min = 0.0, np.inf
        self.argmax_same = self.argmax_total = 0
        self.hull = np.empty((0, 2))  # (|reference|, |diff|) points deciding pass/fail

    def update(self, reference: np.ndarray, output: np.ndarray) -> None:
        reference64, output64 = np.atleast_1d(reference.astype(np.float64), output.astype(np.float64))
        if self.sample_shape is None:
            self.sample_shape = tuple(reference64.shape[1:])
        diff = np.abs(output64 - reference64)
        finite = np.isfinite(diff)
        nonfinite = int(diff.size - finite.sum())  # NaN or inf in either: fails the check
        self.samples += reference64.shape[0]
        self.elements += diff.size
        self.nonfinite += nonfinite
        self.abs_sum += float(diff.sum())
        if diff.size:  # np.maximum/np.minimum keep a NaN once seen
            self.abs_max = float(np.maximum(self.abs_max, diff.max()))
            cosines = _cosines(reference64, output64)
            self.cosine_sum += float(cosines.sum())
            self.cosine_min = float(np.minimum(self.cosine_min, cosines.min()))
        if reference64.ndim >= 2 and reference64.shape[-1] > 1:
            same = reference64.argmax(axis=-1) == output64.argmax(axis=-1)
            self.argmax_same += int(same.sum())
            self.argmax_total += same.size
        r, d = (np.abs(reference64), diff) if nonfinite == 0 else (np.abs(reference64[finite]), diff[finite])
        self.hull = _hull_with(self.hull, r.ravel(), d.ravel())

    def result(self, atol: float, rtol: float) -> dict[str, Any]:
        hull_r, hull_d = self.hull[:, 0], self.hull[:, 1]
        required = float(np.max(hull_d - rtol * hull_r)) if len(self.hull) else 0.0
        within = bool(np.all(hull_d <= atol + rtol * hull_r))
        return {
            "shape": list(self.sample_shape or ()),
            "samples": self.samples,
            "max_abs_diff": self.abs_max,
            "mean_abs_diff": self.abs_sum / max(self.elements, 1),
            "cosine": self.cosine_sum / max(self.samples, 1),
            "cosine_min": float(self.cosine_min),
            "argmax_agreement": self.argmax_same / self.argmax_total * 100.0 if self.argmax_total else None,
            "argmax_positions": self.argmax_total,
            "required_atol": max(required, 0.0),
            "nonfinite": self.nonfinite,
            "passed": within and self.nonfinite == 0,
        }


def _cosines(reference: np.ndarray, output: np.ndarray) -> np.ndarray:
    """Cosine similarity of each sample (all its elements); 1 when both are all zeros."""
    ref = reference.reshape(reference.shape[0], -1)
    out = output.reshape(output.shape[0], -1)
    dot = np.einsum("ij,ij->i", ref, out)
    norms = np.sqrt(np.einsum("ij,ij->i", ref, ref) * np.einsum("ij,ij->i", out, out))
    with np.errstate(invalid="ignore"):
        cosine = dot / np.where(norms == 0, 1.0, norms)  # NaN in a sample stays NaN
    both_zero = ~np.any(ref, axis=1) & ~np.any(out, axis=1)
    return np.where(norms == 0, np.where(both_zero, 1.0, 0.0), cosine)


def _hull_with(hull: np.ndarray, r: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The pass/fail hull of ``hull``'s points and the new points (r, d). A hull of a sample of the new points
    screens them all first: a point on or under its concave chain (flat to the right of its last point), and
    not left of its first point, can never decide pass/fail, so a large batch is never sorted whole."""
    step = max(len(r) // _SAMPLE, 1)
    screen = _upper_hull(np.concatenate([hull, np.stack([r[::step], d[::step]], axis=1)]))
    if len(screen) == 0:
        return screen
    slack = 1e-9 * screen[-1, 1]  # keep points within rounding of the chain: the exact hull sorts them out
    keep = (r < screen[0, 0]) | (d > np.interp(r, screen[:, 0], screen[:, 1]) - slack)
    return _upper_hull(np.concatenate([screen, np.stack([r[keep], d[keep]], axis=1)]))


def _frontier(points: np.ndarray) -> np.ndarray:
    """Points no other dominates (smaller or equal r, larger or equal d): r and d both ascending."""
    if len(points) <= 1:
        return points
    ordered = points[np.lexsort((-points[:, 1], points[:, 0]))]  # r ascending, the largest d first on ties
    best_before = np.maximum.accumulate(ordered[:, 1])
    return ordered[np.concatenate([[True], ordered[1:, 1] > best_before[:-1]])]


def _upper_hull(points: np.ndarray) -> np.ndarray:
    """The points that decide ``all(d <= atol + rtol * r)`` for every atol, rtol >= 0: max(d - rtol * r) over
    all points is reached on the upper convex hull of the points that no other point dominates (smaller or
    equal r with larger or equal d). Typically a handful remain."""
    hull: list[np.ndarray] = []
    for point in _frontier(points):
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], point) >= 0:
            hull.pop()
        hull.append(point)
    return np.array(hull).reshape(-1, 2)


def _cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    return float((a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]))


def relative_change(expected: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> float:
    """The largest change of any output, relative to that output's largest magnitude (inf where shapes differ)."""
    worst = 0.0
    for name, reference in expected.items():
        if name not in got or got[name].shape != reference.shape:
            return float("inf")
        reference = reference.astype(np.float64)
        diff = float(np.max(np.abs(got[name] - reference), initial=0.0))
        worst = max(worst, diff / max(float(np.max(np.abs(reference), initial=0.0)), 1e-12))
    return worst
