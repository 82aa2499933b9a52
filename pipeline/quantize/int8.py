"""INT8: ModelOpt post-training quantization (explicit Q/DQ), and the accuracy budget search.

Q/DQ scales come from a calibration set; attention gates (Sigmoid, Softmax) stay in higher
precision. With an accuracy budget (``max_drop``), the nodes whose quantization hurts most (the
sensitivity ranking) are kept in higher precision, 1, 2, 4 ... of them, until the budget holds.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import onnx

import calibration
from pipeline.artifacts import Kind, atomic_output, sha256_file, write_manifest
from pipeline.errors import EdgepipeError
from pipeline.precision import Precision
from pipeline.progress import console
from pipeline.quantize.heldout import HeldOut
from pipeline.quantize.modelopt_log import last_line, modelopt_error, quiet_modelopt
from pipeline.quantize.qdq_rules import check_tensorrt_qdq_rules
from pipeline.quantize.sensitivity import rank_sensitive_nodes
from pipeline.quantize.source import carry_metadata, check_paths, load_fp32

METHODS = ("entropy", "max")
HIGH_PRECISIONS = ("fp16", "fp32")
# INT8 keeps attention gates in higher precision: a gate in [0, 1] rounded to 8 bits scales every
# channel/position of the features it multiplies, and SE/CBAM/self-attention accuracy depends on it.
INT8_DEFAULT_EXCLUDED_OPS = ("Sigmoid", "Softmax")
# Calibration images the sensitivity ranking runs on (both models, every intermediate tensor).
SENSITIVITY_IMAGES = 64


def to_int8(
    onnx_path: str | Path,
    output: str | Path,
    calib: Any = None,
    method: str = "entropy",
    exclude_ops: Iterable[str] = (),
    exclude_nodes: Iterable[str] = (),
    include_ops: Iterable[str] = (),
    high_precision: str = "fp16",
    max_drop: float | None = None,
    data: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Write an explicit Q/DQ INT8 version of ``onnx_path`` and return its held-out figures.

    ``calib``: a calibration .npz, a CalibrationSet, or None to draw the default set from the
    model's training data. ``max_drop``: the most top-1 points INT8 may lose against FP32; the
    most sensitive nodes are then kept in ``high_precision`` until it holds (or it fails).
    """
    started = time.perf_counter()
    if method not in METHODS:
        raise EdgepipeError(f"unknown calibration method {method!r}", fix=f"use one of {', '.join(METHODS)}")
    if high_precision not in HIGH_PRECISIONS:
        raise EdgepipeError(f"unknown high precision {high_precision!r}", fix=f"use one of {', '.join(HIGH_PRECISIONS)}")
    if max_drop is not None and max_drop < 0:
        raise EdgepipeError(f"--max-drop must be 0 or more points, got {max_drop}", fix="pass a budget such as --max-drop 0.5")
    output = check_paths(onnx_path, output, force)
    model, config = load_fp32(onnx_path, "--int8")
    exclude_ops, include_ops, exclude_nodes = list(exclude_ops), list(include_ops), list(exclude_nodes)
    _check_op_types(model, exclude_ops + include_ops)
    _check_node_names(model, exclude_nodes)
    calib_set = _calibration_set(calib, config)
    excluded_ops = sorted((set(INT8_DEFAULT_EXCLUDED_OPS) - set(include_ops)) | set(exclude_ops))

    quantizer = _Int8Quantizer(onnx_path, calib_set.images, method, excluded_ops, high_precision)
    held_out = HeldOut(onnx_path, config, data)
    quantized = quantizer.run(exclude_nodes)
    figures = held_out.measure(quantized.SerializeToString())
    kept: list[str] = []
    attempts = [{"kept_nodes": [], "top1": figures["top1"], "delta": figures["delta"]}]
    if max_drop is not None and -figures["delta"] > max_drop:
        quantized, figures, kept = _meet_budget(model, quantized, figures, quantizer, held_out, calib_set, exclude_nodes, max_drop, attempts)

    nodes = exclude_nodes + kept
    recipe = {"method": method, "excluded_ops": excluded_ops, "excluded_nodes": nodes, "high_precision": high_precision}
    carry_metadata(model, quantized, Precision.INT8, {"edgepipe.int8": json.dumps(recipe, sort_keys=True)})
    check_tensorrt_qdq_rules(quantized)
    with atomic_output(output) as tmp:
        onnx.save(quantized, str(tmp))
    seconds = round(time.perf_counter() - started, 2)
    params = {"precision": "int8", "method": method, "excluded_ops": excluded_ops, "excluded_nodes": nodes, "high_precision": high_precision, "max_drop": max_drop}
    calib_info = {"source": calib_set.manifest.get("path", "drawn from the training split"), "count": len(calib_set), "sha256": calib_set.sha256}
    write_manifest(
        output, Kind.ONNX, inputs={"onnx": sha256_file(onnx_path), "calibration": calib_set.sha256}, params=params, precision=Precision.INT8,
        accuracy=figures, kept_nodes=kept, attempts=attempts, calibration=calib_info, seconds=seconds,
    )
    return {
        "onnx": str(output), "source": str(onnx_path), "precision": "int8", "seconds": seconds, "method": method,
        "high_precision": high_precision, "excluded_ops": excluded_ops, "excluded_nodes": nodes, "kept_nodes": kept,
        "max_drop": max_drop, "calibration": calib_info, "attempts": attempts, **figures,
    }


class _Int8Quantizer:
    """ModelOpt ONNX PTQ on a private copy of the model in a temporary folder, quietly."""

    def __init__(self, onnx_path, images: np.ndarray, method: str, excluded_ops: list[str], high_precision: str):
        self.onnx_path, self.images, self.method = Path(onnx_path), images, method
        self.excluded_ops, self.high_precision = excluded_ops, high_precision

    def run(self, nodes_to_exclude: list[str]) -> onnx.ModelProto:
        from modelopt.onnx.quantization import quantize  # ModelOpt takes seconds to import: only conversions pay

        with tempfile.TemporaryDirectory(prefix="edgepipe-int8-") as folder:
            source = Path(folder) / "model.onnx"
            target = Path(folder) / "model.int8.onnx"
            shutil.copyfile(self.onnx_path, source)  # ModelOpt writes intermediate files beside its input
            with quiet_modelopt() as log:
                try:
                    quantize(
                        str(source), quantize_mode="int8", calibration_data=self.images, calibration_method=self.method,
                        calibration_eps=["cpu"], op_types_to_exclude=list(self.excluded_ops) or None,
                        nodes_to_exclude=list(nodes_to_exclude) or None, output_path=str(target), log_level="WARNING",
                        high_precision_dtype=self.high_precision,
                    )
                except Exception as exc:  # ModelOpt raises many types on graphs it cannot quantize
                    raise modelopt_error("INT8 quantization", exc, log)
                if not target.is_file():
                    tail = last_line(log)
                    raise EdgepipeError(
                        "ModelOpt wrote no quantized model" + (f" (its log ends: {tail})" if tail else ""),
                        fix="pass the FP32 ONNX from 'edgepipe export'; exclude the failing op with --exclude-op",
                    )
            return onnx.load(str(target))


def _meet_budget(model, quantized, figures, quantizer, held_out, calib_set, exclude_nodes, max_drop, attempts):
    """Keep the most sensitive nodes in high precision, 1, 2, 4 ... of them, until within budget.

    Returns (model, figures, kept nodes) and appends each try to ``attempts``; raises when no
    number of kept nodes meets the budget.
    """
    ranking = [name for name, _ in rank_sensitive_nodes(model, quantized, calib_set.images[:SENSITIVITY_IMAGES]) if name not in exclude_nodes]
    console.print(f"INT8 top-1 {figures['top1']:.2f}% is {-figures['delta']:.2f} points below FP32 (budget {max_drop:g}); "
                  f"keeping the most sensitive of {len(ranking)} quantized nodes in higher precision")
    best = (quantized, figures, [])
    count = 1
    while ranking and count <= len(ranking) * 2:
        kept = ranking[: min(count, len(ranking))]
        candidate = quantizer.run(exclude_nodes + kept)
        result = held_out.measure(candidate.SerializeToString())
        attempts.append({"kept_nodes": kept, "top1": result["top1"], "delta": result["delta"]})
        console.print(f"  keeping {len(kept)} node(s): top-1 {result['top1']:.2f}% ({result['delta']:+.2f} points)")
        if result["top1"] > best[1]["top1"]:
            best = (candidate, result, kept)
        if -result["delta"] <= max_drop:
            return candidate, result, kept
        if len(kept) == len(ranking):
            break
        count *= 2
    _, best_figures, best_kept = best
    raise EdgepipeError(
        f"INT8 cannot stay within {max_drop:g} points of FP32 top-1 {best_figures['reference_top1']:.2f}%: the best reached was "
        f"{best_figures['top1']:.2f}% ({best_figures['delta']:+.2f} points) keeping {len(best_kept)} node(s) in higher precision "
        f"({', '.join(best_kept[:8]) or 'none'}{' ...' if len(best_kept) > 8 else ''}); nothing was written",
        fix="raise --max-drop, try --method max or a larger calibration set (--calib), or use --fp16",
    )


def _check_op_types(model: onnx.ModelProto, op_types: list[str]) -> None:
    present = sorted({node.op_type for node in model.graph.node})
    unknown = [op for op in op_types if op not in present]
    if unknown:
        raise EdgepipeError(f"the model has no {', '.join(unknown)} op (it has: {', '.join(present)})", fix="pass op types from that list to --exclude-op/--include-op")


def _check_node_names(model: onnx.ModelProto, names: list[str]) -> None:
    present = {node.name for node in model.graph.node}
    unknown = [name for name in names if name not in present]
    if unknown:
        example = ", ".join(sorted(n for n in present if n)[:5])
        raise EdgepipeError(f"the model has no node named {', '.join(unknown)} (names look like: {example})", fix="pass node names from the ONNX graph (e.g. as Netron shows them) to --exclude-node")


def _calibration_set(calib: Any, config: dict[str, Any]) -> calibration.CalibrationSet:
    """The calibration set ``calib`` names (None: drawn from the training split), checked against the model."""
    if calib is None:
        console.print(f"No --calib given: drawing {calibration.DEFAULT_NUM} calibration images from the model's training split ({config['data']['source']})")
        calib_set = calibration.draw(config, num=calibration.DEFAULT_NUM, seed=0)
    elif isinstance(calib, calibration.CalibrationSet):
        calib_set = calib
    else:
        calib_set = calibration.load(calib)
        calib_set.manifest = {**calib_set.manifest, "path": str(calib)}
    calibration.check_matches(calib_set, config)
    return calib_set
