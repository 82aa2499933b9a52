"""Models from older exporters (opset 11 or 12) lifted to the opset 13 Q/DQ (INT8) needs, and proof that
nothing changed: ``prove_same`` runs both models on ONNX Runtime, so the upgrade is shown rather than
assumed (ModelOpt's quantizer would raise the opset itself, silently and unproven)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import version_converter

from pipeline.errors import EdgepipeError
from pipeline.onnxinfo import DEFAULT_TARGET_OPSET, MIN_QDQ_OPSET, ModelSource, load_model, opset_of, run_onnxruntime

SAME_TOLERANCE = 1e-5  # upgraded vs original: |upgraded - original| <= 1e-5 + 1e-5 * |original|


def upgrade_opset(model: ModelSource, target: int = DEFAULT_TARGET_OPSET) -> onnx.ModelProto:
    model = load_model(model)
    current = opset_of(model)
    if current >= target:
        return model
    try:
        upgraded = version_converter.convert_version(model, target)
        onnx.checker.check_model(upgraded)
    except Exception as exc:  # the converter raises plain RuntimeErrors from C++ for ops it cannot lift
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise EdgepipeError(
            f"onnx's version converter cannot upgrade the model from opset {current} to {target}: {reason}",
            fix=f"re-export the model at opset {MIN_QDQ_OPSET} or later (e.g. torch.onnx.export(..., opset_version={target}))",
        )
    return upgraded  # the converter keeps metadata_props and the producer


def prove_same(
    original: ModelSource,
    upgraded: ModelSource,
    inputs: np.ndarray | dict[str, np.ndarray],
    tolerance: float = SAME_TOLERANCE,
) -> dict[str, float]:
    """The max abs difference per output of both models on ONNX Runtime; raises naming an output that differs
    by more than ``tolerance`` (abs + rel)."""
    original, upgraded = load_model(original), load_model(upgraded)
    expected, got = run_onnxruntime(original, inputs), run_onnxruntime(upgraded, inputs)
    what, against = f"the opset-{opset_of(upgraded)} model", f"the opset-{opset_of(original)} original"
    fix = f"re-export the model at opset {MIN_QDQ_OPSET} or later instead of upgrading it"
    differences = {}
    for name, reference in expected.items():
        if name not in got:
            raise EdgepipeError(f"{what} has no output '{name}' (it has {', '.join(got)})", fix=fix)
        if got[name].shape != reference.shape:
            raise EdgepipeError(
                f"{what} gives output '{name}' shape {got[name].shape}; {against} gives {reference.shape}", fix=fix
            )
        ref64 = reference.astype(np.float64)
        diff = np.abs(got[name].astype(np.float64) - ref64)
        outside = ~(diff <= tolerance + tolerance * np.abs(ref64))  # NaN counts as outside
        if outside.any():
            index = np.unravel_index(int(np.argmax(outside)), diff.shape)
            raise EdgepipeError(
                f"{what} differs from {against} on output '{name}': abs difference {diff[index]:.3g} at index {tuple(int(i) for i in index)} "
                f"(original {ref64[index]:.6g}), max {np.nanmax(diff):.3g}; allowed {tolerance:g} + {tolerance:g} x |original|",
                fix=fix,
            )
        differences[name] = float(diff.max()) if diff.size else 0.0
    return differences
