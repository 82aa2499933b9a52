"""Precision: FP16 and INT8 (explicit Q/DQ) ONNX models made with NVIDIA ModelOpt, proven on held-out data.

TensorRT 11 and TensorRT-RTX take precision from the ONNX graph (strongly typed networks), so
this stage rewrites the graph:

* FP16: ModelOpt AutoCast converts the graph, keeps inputs/outputs FP32 and keeps the ops that
  overflow or lose accuracy in FP16 (reductions, softmax, normalization, exp/pow/sqrt) in FP32.
* INT8: ModelOpt post-training quantization inserts QuantizeLinear/DequantizeLinear pairs whose
  scales come from a calibration set. Attention gates (Sigmoid, Softmax) stay in higher precision.
  With an accuracy budget (``max_drop``), the nodes whose quantization hurts most (a sensitivity
  ranking on calibration images) are kept in higher precision until the budget holds.

Every model written obeys the TensorRT ONNX parser's Q/DQ rules (``check_tensorrt_qdq_rules``),
and is measured against the FP32 ONNX model (which export proved equal to PyTorch) on the
held-out split.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import onnx

import calibration
from pipeline import data as datamod
from pipeline.artifacts import atomic_output, check_output, sha256_file, write_manifest
from pipeline.errors import EdgepipeError
from pipeline.metrics import compare_logits, top1
from pipeline.onnxfile import load_onnx, onnx_config, set_metadata
from pipeline.progress import console
from pipeline.runners import OnnxRuntimeRunner, predict

PRECISIONS = ("fp32", "fp16", "int8")
METHODS = ("entropy", "max")
HIGH_PRECISIONS = ("fp16", "fp32")
PRECISION_KEY = "edgepipe.precision"
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
MIN_OPSET = 13

# FP16 keeps these in FP32: reductions and softmax accumulate and overflow (65504 is FP16's max),
# normalization divides by a variance, exp/pow/sqrt/log/reciprocal overflow or lose precision.
FP16_FP32_OPS = (
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
    "Softmax", "LogSoftmax", "BatchNormalization", "LayerNormalization", "InstanceNormalization",
    "GroupNormalization", "LpNormalization", "Exp", "Pow", "Sqrt", "Log", "Reciprocal",
)
# INT8 keeps attention gates in higher precision: a gate in [0, 1] rounded to 8 bits scales every
# channel/position of the features it multiplies, and SE/CBAM/self-attention accuracy depends on it.
INT8_DEFAULT_EXCLUDED_OPS = ("Sigmoid", "Softmax")

# Accuracy budget search: add the most sensitive nodes 1, 2, 4, 8 ... at a time, so a few
# re-quantizations cover the whole ranking.
SENSITIVITY_IMAGES = 64
# Nodes whose quantization can change a value: compute ops with a DequantizeLinear input.
_NOT_RANKED = set(QDQ_OPS) | {"Cast", "Constant", "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose"}


# --- detection and rules --------------------------------------------------------------------------


def is_quantized(model: onnx.ModelProto) -> bool:
    """True when the graph holds Q/DQ nodes (an INT8 or otherwise quantized model)."""
    return any(node.op_type in QDQ_OPS for node in model.graph.node)


def detect_precision(model: onnx.ModelProto) -> str:
    """"int8" for a Q/DQ graph, "fp16" when it holds float16 tensors, else "fp32"."""
    if is_quantized(model):
        return "int8"
    float16 = onnx.TensorProto.FLOAT16
    graph = model.graph
    typed = list(graph.input) + list(graph.output) + list(graph.value_info)
    if (
        any(init.data_type == float16 for init in graph.initializer)
        or any(v.type.tensor_type.elem_type == float16 for v in typed)
        or any(node.op_type == "Cast" and _attr(node, "to") == float16 for node in graph.node)
        or any(node.op_type == "Constant" and _attr(node, "value") is not None and _attr(node, "value").data_type == float16 for node in graph.node)
    ):
        return "fp16"
    return "fp32"


def check_tensorrt_qdq_rules(model: onnx.ModelProto) -> None:
    """Raise EdgepipeError naming the node when ``model`` breaks a rule of the TensorRT ONNX parser.

    The rules: opset >= 13; every Q/DQ zero point is a constant 0 (TensorRT quantizes
    symmetrically); no quantized bias (an INT32 DequantizeLinear, or any DequantizeLinear feeding
    a Conv/Gemm bias); per-channel (1-D) scales only on constant weights, along the weight's
    output-channel axis: 0 for Conv and Gemm with transB=1, 1 for ConvTranspose, Gemm with
    transB=0 and MatMul (whose constant weight is K x N).
    """
    opset = _default_opset(model)
    if opset < MIN_OPSET:
        raise EdgepipeError(f"the model uses ONNX opset {opset}; TensorRT needs >= {MIN_OPSET} for Q/DQ", fix="export it again with --opset 13 or later")
    constants = _constants(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, index))
    fix = "quantize the FP32 model with 'edgepipe quantize --int8' (symmetric, per-channel weights only)"
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        label = f"{node.op_type} node {node.name or node.output[0]!r}"
        if len(node.input) > 2 and node.input[2]:
            zero_point = constants.get(node.input[2])
            if zero_point is None:
                raise EdgepipeError(f"{label} has a zero point that is not a constant; TensorRT needs zero point 0", fix=fix)
            if np.any(zero_point != 0):
                raise EdgepipeError(f"{label} has a non-zero zero point; TensorRT only takes symmetric quantization (zero point 0)", fix=fix)
        if node.op_type == "DequantizeLinear":
            x = constants.get(node.input[0])
            if x is not None and x.dtype == np.int32:
                raise EdgepipeError(f"{label} dequantizes an INT32 tensor (a quantized bias); the TensorRT ONNX parser rejects it", fix="keep biases in float: " + fix)
            for consumer, index in consumers.get(node.output[0], []):
                if consumer.op_type in ("Conv", "ConvTranspose", "Gemm") and index == 2:
                    raise EdgepipeError(f"{label} feeds the bias of {consumer.op_type} node {consumer.name!r}; TensorRT takes no quantized bias", fix="keep biases in float: " + fix)
        scale = constants.get(node.input[1])
        if scale is None:
            raise EdgepipeError(f"{label} has a scale that is not a constant; TensorRT needs build-time scales", fix=fix)
        if scale.size > 1 or scale.ndim > 0 and scale.ndim != 1:
            _check_per_channel(node, label, scale, constants, producers, consumers, fix)


def _check_per_channel(node, label, scale, constants, producers, consumers, fix) -> None:
    """A per-channel scale is only allowed on a constant weight, along its output-channel axis."""
    if scale.ndim != 1:
        raise EdgepipeError(f"{label} has a {scale.ndim}-D scale; TensorRT takes a scalar or a 1-D per-channel scale for INT8", fix=fix)
    weight = _weight_behind(node, constants, producers)
    if weight is None:
        raise EdgepipeError(f"{label} quantizes an activation per channel; TensorRT allows per-channel scales only for weights", fix=fix)
    axis = _attr(node, "axis")
    axis = 1 if axis is None else axis
    axis = axis + weight.ndim if axis < 0 else axis
    dq_output = node.output[0] if node.op_type == "DequantizeLinear" else _dq_after(node, consumers)
    for consumer, index in consumers.get(dq_output, []) if dq_output else []:
        expected = _weight_axis(consumer, index, weight.ndim)
        if expected is not None and axis != expected:
            raise EdgepipeError(
                f"{label} quantizes the weight of {consumer.op_type} node {consumer.name!r} along axis {axis}; TensorRT needs its output-channel axis {expected}",
                fix=fix,
            )


def _weight_axis(consumer: onnx.NodeProto, index: int, rank: int) -> int | None:
    """The output-channel axis of the weight ``consumer`` takes at input ``index``."""
    if consumer.op_type == "Conv" and index == 1:
        return 0
    if consumer.op_type == "ConvTranspose" and index == 1:
        return 1
    if consumer.op_type == "Gemm" and index == 1:
        return 0 if _attr(consumer, "transB") else 1
    if consumer.op_type == "MatMul" and index == 1:
        return rank - 1
    return None


def _weight_behind(node, constants, producers) -> np.ndarray | None:
    """The constant a Q or DQ node quantizes, looking through a Q in front of a DQ."""
    source = node.input[0]
    if source in constants:
        return constants[source]
    producer = producers.get(source)
    if node.op_type == "DequantizeLinear" and producer is not None and producer.op_type == "QuantizeLinear":
        return constants.get(producer.input[0])
    return None


def _dq_after(q_node, consumers) -> str | None:
    for consumer, _ in consumers.get(q_node.output[0], []):
        if consumer.op_type == "DequantizeLinear":
            return consumer.output[0]
    return None


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and _attr(node, "value") is not None:
            values[node.output[0]] = onnx.numpy_helper.to_array(_attr(node, "value"))
    return values


def _attr(node: onnx.NodeProto, name: str):
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return None


def _default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 0


# --- FP16 -----------------------------------------------------------------------------------------


def to_fp16(onnx_path: str | Path, output: str | Path, force: bool = False, data: str | None = None) -> dict[str, Any]:
    """Write an FP16 version of ``onnx_path`` (I/O and overflow-prone ops FP32); return its figures."""
    started = time.perf_counter()
    output = _check_paths(onnx_path, output, force)
    model, config = _load_fp32(onnx_path, "--fp16")
    from modelopt.onnx.autocast import convert_to_mixed_precision

    present = sorted({node.op_type for node in model.graph.node} & set(FP16_FP32_OPS))
    with _quiet_modelopt() as log:
        try:
            converted = convert_to_mixed_precision(
                onnx_path=str(onnx_path), low_precision_type="fp16", keep_io_types=True,
                op_types_to_exclude=list(FP16_FP32_OPS), providers=["cpu"],
            )
        except Exception as exc:  # ModelOpt raises many types on graphs it cannot convert
            raise _modelopt_error("FP16 conversion", exc, log)
    _carry_metadata(model, converted, {PRECISION_KEY: "fp16"})
    check_tensorrt_qdq_rules(converted)
    figures = _Evaluator(onnx_path, config, data).measure(converted.SerializeToString())
    with atomic_output(output) as tmp:
        onnx.save(converted, str(tmp))
    params = {"precision": "fp16", "keep_io_types": True, "fp32_ops": present}
    seconds = round(time.perf_counter() - started, 2)
    write_manifest(output, "onnx", inputs={"onnx": sha256_file(onnx_path)}, params=params, accuracy=figures, seconds=seconds)
    return {"onnx": str(output), "source": str(onnx_path), "precision": "fp16", "seconds": seconds, "fp32_ops": present, **figures}


# --- INT8 -----------------------------------------------------------------------------------------


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
    output = _check_paths(onnx_path, output, force)
    model, config = _load_fp32(onnx_path, "--int8")
    exclude_ops, include_ops, exclude_nodes = list(exclude_ops), list(include_ops), list(exclude_nodes)
    _check_op_types(model, exclude_ops + include_ops)
    _check_node_names(model, exclude_nodes)
    calib_set = _calibration_set(calib, config)
    excluded_ops = sorted((set(INT8_DEFAULT_EXCLUDED_OPS) - set(include_ops)) | set(exclude_ops))

    quantizer = _Int8Quantizer(onnx_path, calib_set.images, method, excluded_ops, high_precision)
    evaluator = _Evaluator(onnx_path, config, data)
    quantized = quantizer.run(exclude_nodes)
    figures = evaluator.measure(quantized.SerializeToString())
    kept: list[str] = []
    attempts = [{"kept_nodes": [], "top1": figures["top1"], "delta": figures["delta"]}]
    if max_drop is not None and -figures["delta"] > max_drop:
        quantized, figures, kept, attempts = _meet_budget(model, quantized, figures, quantizer, evaluator, calib_set, exclude_nodes, max_drop, attempts)

    nodes = exclude_nodes + kept
    _carry_metadata(model, quantized, {PRECISION_KEY: "int8", "edgepipe.int8": json.dumps({"method": method, "excluded_ops": excluded_ops, "excluded_nodes": nodes, "high_precision": high_precision}, sort_keys=True)})
    check_tensorrt_qdq_rules(quantized)
    with atomic_output(output) as tmp:
        onnx.save(quantized, str(tmp))
    seconds = round(time.perf_counter() - started, 2)
    params = {"precision": "int8", "method": method, "excluded_ops": excluded_ops, "excluded_nodes": nodes, "high_precision": high_precision, "max_drop": max_drop}
    calib_info = {"source": calib_set.manifest.get("path", "drawn from the training split"), "count": len(calib_set), "sha256": calib_set.sha256}
    write_manifest(
        output, "onnx", inputs={"onnx": sha256_file(onnx_path), "calibration": calib_set.sha256}, params=params,
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
        from modelopt.onnx.quantization import quantize

        with tempfile.TemporaryDirectory(prefix="edgepipe-int8-") as folder:
            source = Path(folder) / "model.onnx"
            target = Path(folder) / "model.int8.onnx"
            shutil.copyfile(self.onnx_path, source)  # ModelOpt writes intermediate files beside its input
            with _quiet_modelopt() as log:
                try:
                    quantize(
                        str(source), quantize_mode="int8", calibration_data=self.images, calibration_method=self.method,
                        calibration_eps=["cpu"], op_types_to_exclude=list(self.excluded_ops) or None,
                        nodes_to_exclude=list(nodes_to_exclude) or None, output_path=str(target), log_level="WARNING",
                        high_precision_dtype=self.high_precision,
                    )
                except Exception as exc:  # ModelOpt raises many types on graphs it cannot quantize
                    raise _modelopt_error("INT8 quantization", exc, log)
            if not target.is_file():
                raise EdgepipeError("ModelOpt wrote no quantized model", fix="run with the FP32 ONNX from 'edgepipe export' and check the log above")
            return onnx.load(str(target))


def _meet_budget(model, quantized, figures, quantizer, evaluator, calib_set, exclude_nodes, max_drop, attempts):
    """Keep the most sensitive nodes in high precision, 1, 2, 4 ... of them, until within budget."""
    ranking = [name for name, _ in rank_sensitive_nodes(model, quantized, calib_set.images[:SENSITIVITY_IMAGES]) if name not in exclude_nodes]
    console.print(f"INT8 top-1 {figures['top1']:.2f}% is {-figures['delta']:.2f} points below FP32 (budget {max_drop:g}); "
                  f"keeping the most sensitive of {len(ranking)} quantized nodes in higher precision")
    best = (quantized, figures, [])
    count = 1
    while ranking and count <= len(ranking) * 2:
        kept = ranking[: min(count, len(ranking))]
        candidate = quantizer.run(exclude_nodes + kept)
        result = evaluator.measure(candidate.SerializeToString())
        attempts.append({"kept_nodes": kept, "top1": result["top1"], "delta": result["delta"]})
        console.print(f"  keeping {len(kept)} node(s): top-1 {result['top1']:.2f}% ({result['delta']:+.2f} points)")
        if result["top1"] > best[1]["top1"]:
            best = (candidate, result, kept)
        if -result["delta"] <= max_drop:
            return candidate, result, kept, attempts
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


def rank_sensitive_nodes(fp32_model: onnx.ModelProto, int8_model: onnx.ModelProto, images: np.ndarray) -> list[tuple[str, float]]:
    """Quantized nodes, most harmful first: how much relative error each adds to its output.

    Runs both models on ``images`` with ONNX Runtime, every intermediate tensor exposed as an
    output. A node's score is the relative L2 error of its output against the FP32 model's same
    tensor, minus the largest error already present on its inputs, so that error inherited from
    earlier layers is not blamed on later ones.
    """
    fp32_names = {out for node in fp32_model.graph.node for out in node.output}
    producers = {out: node for node in int8_model.graph.node for out in node.output}
    ranked_nodes = [
        node for node in int8_model.graph.node
        if node.op_type not in _NOT_RANKED and node.name and node.output[0] in fp32_names
        and any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in node.input)
    ]
    if not ranked_nodes:
        return []
    watched = sorted({n.output[0] for n in ranked_nodes} | {src for n in ranked_nodes for src in _sources(n, producers) if src in fp32_names})
    reference = _intermediates(fp32_model, watched, images)
    candidate = _intermediates(int8_model, watched, images)

    def error(name: str) -> float:
        if name not in reference or name not in candidate:
            return 0.0
        ref = reference[name].astype(np.float64)
        return float(np.linalg.norm(candidate[name].astype(np.float64) - ref) / max(np.linalg.norm(ref), 1e-12))

    scores = []
    for node in ranked_nodes:
        inherited = max((error(src) for src in _sources(node, producers)), default=0.0)
        scores.append((node.name, error(node.output[0]) - inherited))
    return sorted(scores, key=lambda item: item[1], reverse=True)


def _sources(node: onnx.NodeProto, producers: dict) -> list[str]:
    """The tensors behind a node's inputs, looking back through Q/DQ and Cast nodes."""
    sources = []
    for name in node.input:
        while name in producers and producers[name].op_type in (*QDQ_OPS, "Cast"):
            name = producers[name].input[0]
        if name in producers:
            sources.append(name)
    return sources


def _intermediates(model: onnx.ModelProto, names: list[str], images: np.ndarray) -> dict[str, np.ndarray]:
    """Run ``model`` with ``names`` added to its outputs; returns the tensors found, as float32."""
    import onnxruntime as ort

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    existing = {o.name for o in exposed.graph.output}
    added = [n for n in names if n in types and n not in existing and types[n]]
    for name in added:
        exposed.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    session = ort.InferenceSession(exposed.SerializeToString(), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    wanted = [o.name for o in session.get_outputs() if o.name in set(names)]
    values = session.run(wanted, {input_name: np.ascontiguousarray(images, dtype=np.float32)})
    return {name: value.astype(np.float32) for name, value in zip(wanted, values)}


# --- shared ---------------------------------------------------------------------------------------


class _Evaluator:
    """Held-out figures of candidate models against the FP32 ONNX model (proven equal to PyTorch)."""

    def __init__(self, onnx_path, config: dict[str, Any], data: str | None):
        dataset = datamod.load_for_config(config, data)
        self.images, self.labels = datamod.split_of(config, dataset, "val")
        self.reference = predict(OnnxRuntimeRunner(onnx_path), self.images)
        self.reference_top1 = top1(self.reference, self.labels)

    def measure(self, model_bytes: bytes) -> dict[str, Any]:
        logits = predict(OnnxRuntimeRunner(model_bytes), self.images)
        figures = compare_logits(self.reference, logits)
        value = top1(logits, self.labels)
        return {
            "samples": int(len(self.labels)),
            "top1": value,
            "reference_top1": self.reference_top1,
            "delta": value - self.reference_top1,
            "agreement": figures.pop("top1_agreement"),
            **figures,
        }


def _check_paths(onnx_path, output, force) -> Path:
    output = Path(output)
    if output.exists() and Path(onnx_path).exists() and output.resolve() == Path(onnx_path).resolve():
        raise EdgepipeError(f"the output {output} is the input model", fix="pass another -o path")
    return check_output(output, force)


def _load_fp32(onnx_path, flag: str) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The FP32 source model and its edgepipe config; refuses already converted models."""
    model = load_onnx(onnx_path)
    config = onnx_config(model, onnx_path)
    have = detect_precision(model)
    if have != "fp32":
        raise EdgepipeError(
            f"{onnx_path} is already {have.upper()}; {flag} needs the FP32 model",
            fix="pass the FP32 .onnx written by 'edgepipe export'",
        )
    return model, config


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


def _carry_metadata(source: onnx.ModelProto, target: onnx.ModelProto, extra: dict[str, str]) -> None:
    """ModelOpt drops metadata_props: copy edgepipe's config (and add the precision) to the result."""
    values = {prop.key: prop.value for prop in source.metadata_props}
    values.update(extra)
    set_metadata(target, values)
    target.producer_name = source.producer_name or "edgepipe"


@contextlib.contextmanager
def _quiet_modelopt() -> Iterator[Path]:
    """Send ModelOpt's and ONNX Runtime's output (print, tqdm, logging, C++) to a log file.

    Yields the log's path so that an error can quote its last lines.
    """
    import logging

    from pipeline.clitools import quiet_libraries

    quiet_libraries()
    log = tempfile.NamedTemporaryFile(prefix="edgepipe-modelopt-", suffix=".log", delete=False)
    path = Path(log.name)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = []
    try:
        for stream in (sys.stdout, sys.stderr):
            try:
                fd = stream.fileno()
            except (AttributeError, OSError, ValueError):  # e.g. captured by a test runner
                continue
            saved.append((fd, os.dup(fd)))
            os.dup2(log.fileno(), fd)
        with contextlib.redirect_stdout(log_text := open(path, "a")), contextlib.redirect_stderr(log_text):
            previous = logging.root.manager.disable
            logging.disable(logging.WARNING)
            try:
                yield path
            finally:
                logging.disable(previous)
                log_text.close()
    finally:
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        log.close()
        with contextlib.suppress(OSError):
            path.unlink()


def _modelopt_error(what: str, exc: Exception, log: Path) -> EdgepipeError:
    reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return EdgepipeError(f"ModelOpt {what} failed: {reason}", fix="check that the ONNX came from 'edgepipe export' (FP32, opset >= 13); exclude the failing op with --exclude-op")
