"""INT8: ModelOpt post-training quantization (explicit Q/DQ), checked against FP32, within an accuracy budget.

Q/DQ scales come from calibration images (``calib.py``: never random data); attention gates
(Sigmoid, Softmax) stay in higher precision. The result is checked against the FP32 model on the
held-out split of an edgepipe export, or on the user's images (``checks.py``). With a budget
(``budget.py``: --max-drop, --min-agreement) the most sensitive nodes are kept in higher
precision until it holds. The result says what stayed in higher precision and what share of the
MACs runs in INT8 (``graph.py``).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from pipeline.artifacts import Kind, atomic_output, sha256_file, write_manifest
from pipeline.defaults import CALIBRATION_METHODS, HIGH_PRECISIONS
from pipeline.errors import EdgepipeError
from pipeline.precision import Precision
from pipeline.progress import info as say
from pipeline.quantize.budget import Budget, Outcome, attempt, search
from pipeline.quantize.calib import foreign_calibration, zoo_calibration
from pipeline.quantize.checks import Check, user_images
from pipeline.quantize.graph import count_macs, int8_share
from pipeline.quantize.heldout import HeldOut
from pipeline.quantize.modelopt_log import last_line, modelopt_error, quiet_modelopt
from pipeline.quantize.qdq_rules import check_tensorrt_qdq_rules
from pipeline.quantize.source import Source, carry_metadata, check_paths, open_source

METHODS = CALIBRATION_METHODS
# INT8 keeps attention gates in higher precision: a gate in [0, 1] rounded to 8 bits scales every
# channel/position of the features it multiplies, and SE/CBAM/self-attention accuracy depends on it.
INT8_DEFAULT_EXCLUDED_OPS = ("Sigmoid", "Softmax")


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
    *,
    min_agreement: float | None = None,
    size: tuple[int, int] | None = None,
    size_flag: str = "--input-size",
    preprocess: Any = None,
    labels: str | Path | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Write an explicit Q/DQ INT8 version of ``onnx_path`` and return its figures against FP32.

    ``calib``: a calibration set or .npz (None: an edgepipe export draws one from its training
    split; any other model needs ``calib`` or ``data``). ``max_drop`` (top-1 points) and
    ``min_agreement`` (percent) are the accuracy budget. ``size``: height and width for a model
    with dynamic ones (``size_flag`` names the flag that gave it). ``preprocess`` (PreprocessFlags),
    ``labels`` and ``workers``: how a folder given as ``data`` is read.
    """
    started = time.perf_counter()
    if method not in METHODS:
        raise EdgepipeError(f"unknown calibration method {method!r}", fix=f"use one of {', '.join(METHODS)}")
    if high_precision not in HIGH_PRECISIONS:
        raise EdgepipeError(
            f"unknown high precision {high_precision!r}", fix=f"use one of {', '.join(HIGH_PRECISIONS)}"
        )
    budget = Budget(max_drop, min_agreement)
    output = check_paths(onnx_path, output, force)
    source = open_source(onnx_path, "--int8", size, size_flag)
    exclude_ops, include_ops, exclude_nodes = list(exclude_ops), list(include_ops), list(exclude_nodes)
    _check_op_types(source.model, exclude_ops + include_ops)
    _check_node_names(source.model, exclude_nodes)
    excluded_ops = sorted((set(INT8_DEFAULT_EXCLUDED_OPS) - set(include_ops)) | set(exclude_ops))

    calib_images, calib_info, check, check_images = _data(
        source, calib, data, budget, {"preprocess": preprocess, "labels": labels, "workers": workers}
    )
    record = check.record()
    say(f"INT8 is checked against FP32 on {record['text']}" + (f"; {record['hint']}" if record["hint"] else ""))
    quantizer = _Int8Quantizer(source, calib_images, method, excluded_ops, high_precision)
    quantized = quantizer.run(exclude_nodes)
    figures = check.measure(quantized.SerializeToString())
    attempts = [attempt([], figures, "plain")]
    outcome = Outcome(quantized, figures)
    per_node = _macs_per_node(source)
    if budget.active and not budget.met(figures):
        outcome = search(
            budget, source.fp32, quantized, figures, check_images, check.measure, attempts, exclude_nodes, per_node
        )
    quantized, figures, kept = outcome.model, outcome.figures, outcome.kept_nodes
    macs = int8_share(quantized, per_node) if per_node else None

    nodes = exclude_nodes + kept
    recipe = {"method": method, "excluded_ops": excluded_ops, "excluded_nodes": nodes, "high_precision": high_precision}
    carry_metadata(source.model, quantized, Precision.INT8, {"edgepipe.int8": json.dumps(recipe, sort_keys=True)})
    preprocess_used = check.images.preprocess if source.foreign else None
    if preprocess_used is not None:  # later stages read the user's images the same way, with no flags
        preprocess_used.store_in(quantized)
    check_tensorrt_qdq_rules(quantized)
    with atomic_output(output) as tmp:
        onnx.save(quantized, str(tmp))
    seconds = round(time.perf_counter() - started, 2)
    params = {
        "precision": "int8",
        "method": method,
        "excluded_ops": excluded_ops,
        "excluded_nodes": nodes,
        "high_precision": high_precision,
        **budget.record(),
        "input_shape": list(source.input_shape()),
        "data": data,
        "preprocess": preprocess_used and preprocess_used.to_dict(),
    }
    facts = {
        "kept_nodes": kept,
        "kept_op_types": outcome.kept_op_types,
        "attempts": attempts,
        "calibration": calib_info,
        "check": check.record(),
        "macs": macs,
        "opset_upgrade": source.upgrade,
    }
    write_manifest(
        output,
        Kind.ONNX,
        inputs={"onnx": sha256_file(onnx_path), "calibration": calib_info["sha256"]},
        params=params,
        precision=Precision.INT8,
        accuracy=figures,
        seconds=seconds,
        **facts,
    )
    return {
        "onnx": str(output),
        "source": str(onnx_path),
        "precision": "int8",
        "seconds": seconds,
        "method": method,
        "high_precision": high_precision,
        "excluded_ops": excluded_ops,
        "excluded_nodes": nodes,
        **budget.record(),
        **facts,
        **figures,
    }


def _data(source: Source, calib: Any, data: str | None, budget: Budget, reading: dict[str, Any]):
    """(calibration images, their record, the check, the check's images) for an edgepipe export or any other model."""
    if not source.foreign:
        calib_set = zoo_calibration(calib, source.config)
        calib_info = {
            "source": calib_set.manifest.get("path", "drawn from the training split"),
            "count": len(calib_set),
            "sha256": calib_set.sha256,
        }
        check = HeldOut(source.path, source.config, data)
        source.prepare(calib_set.images, "calibration images")
        return calib_set.images, calib_info, check, check.images
    pool = held_out = None
    if data is not None:
        pool, held_out = user_images(data, source.model, source.info, None, **reading)
        if source.info.dynamic_hw and source.size is None:
            h_axis, w_axis = source.info.hw_axes
            source.fix_size((pool.x.shape[h_axis], pool.x.shape[w_axis]), f"--data {Path(data).name}")
    calib_images, calib_info = foreign_calibration(calib, pool, source, reading=reading)
    check_images = held_out or calib_images
    if held_out is None:
        check_images.text, check_images.hint = f"the {calib_images.text}", "pass --data for held-out images"
    budget.check_images(check_images.labelled, check_images.text)
    note = source.prepare(calib_images.x, "calibration images")
    if note:
        say(note)
    return calib_images.x, calib_info, Check(source.fp32.SerializeToString(), check_images, source.info), check_images.x


def _macs_per_node(source: Source) -> dict[str, int] | None:
    """MACs of each Conv/MatMul/Gemm for one sample; None where shape inference cannot follow the model."""
    try:
        return count_macs(source.fp32, source.input_shape(1))
    except EdgepipeError:
        return None


class _Int8Quantizer:
    """ModelOpt ONNX PTQ of the source model in a private temporary folder, quietly."""

    def __init__(self, source: Source, images: np.ndarray, method: str, excluded_ops: list[str], high_precision: str):
        self.source, self.images, self.method = source, images, method
        self.excluded_ops, self.high_precision = excluded_ops, high_precision

    def run(self, nodes_to_exclude: list[str]) -> onnx.ModelProto:
        from modelopt.onnx.quantization import quantize  # ModelOpt takes seconds to import: only conversions pay

        with tempfile.TemporaryDirectory(prefix="edgepipe-int8-") as folder:
            source = self.source.write_fp32(Path(folder))  # ModelOpt writes intermediate files beside its input
            target = Path(folder) / "model.int8.onnx"
            with quiet_modelopt() as log:
                try:
                    quantize(
                        str(source),
                        quantize_mode="int8",
                        calibration_data=self.images,
                        calibration_method=self.method,
                        calibration_eps=["cpu"],
                        op_types_to_exclude=list(self.excluded_ops) or None,
                        nodes_to_exclude=list(nodes_to_exclude) or None,
                        output_path=str(target),
                        log_level="WARNING",
                        high_precision_dtype=self.high_precision,
                    )
                except Exception as exc:  # ModelOpt raises many types on graphs it cannot quantize
                    raise modelopt_error("INT8 quantization", exc, log)
                if not target.is_file():
                    tail = last_line(log)
                    raise EdgepipeError(
                        "ModelOpt wrote no quantized model" + (f" (its log ends: {tail})" if tail else ""),
                        fix="pass an FP32 ONNX model; exclude the failing op with --exclude-op",
                    )
            return onnx.load(str(target))


def _check_op_types(model: onnx.ModelProto, op_types: list[str]) -> None:
    present = sorted({node.op_type for node in model.graph.node})
    unknown = [op for op in op_types if op not in present]
    if unknown:
        raise EdgepipeError(
            f"the model has no {', '.join(unknown)} op (it has: {', '.join(present)})",
            fix="pass op types from that list to --exclude-op/--include-op",
        )


def _check_node_names(model: onnx.ModelProto, names: list[str]) -> None:
    present = {node.name for node in model.graph.node}
    unknown = [name for name in names if name not in present]
    if unknown:
        example = ", ".join(sorted(n for n in present if n)[:5])
        raise EdgepipeError(
            f"the model has no node named {', '.join(unknown)} (names look like: {example})",
            fix="pass node names from the ONNX graph (e.g. as Netron shows them) to --exclude-node",
        )
