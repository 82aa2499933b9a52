"""The quantize stage: FP16 and INT8 (explicit Q/DQ) ONNX models made with NVIDIA ModelOpt, proven against FP32.

TensorRT 11 and TensorRT-RTX take precision from the ONNX graph (strongly typed networks), so
this stage rewrites the graph, for edgepipe's own exports and for any single-image-input ONNX:

* ``source.py``: the FP32 source (any ONNX); the one input shape a
  dynamic-H/W model is converted and checked at; opset 11/12 upgraded and proven unchanged.
* FP16 (``fp16.py``): ModelOpt AutoCast converts the graph, keeps inputs/outputs FP32 and keeps
  the ops that overflow or lose accuracy in FP16 (reductions, softmax, normalization,
  exp/pow/sqrt) in FP32.
* INT8 (``int8.py``): ModelOpt post-training quantization inserts QuantizeLinear/DequantizeLinear
  pairs whose scales come from calibration images (``calib.py``; never random data), and edgepipe
  quantizes the MatMuls its placement leaves out (``linear_cover.py``). Attention
  gates (Sigmoid, Softmax) stay in higher precision. With an accuracy budget (``budget.py``:
  --max-drop, --min-agreement) the nodes whose quantization hurts most (``sensitivity.py``) are
  kept in higher precision until it holds; ``graph.py`` says what share of the MACs runs in INT8.
* INT8 by quantization-aware training (``qat.py``, ``--qat EPOCHS``): for an ONNX exported from a
  PyTorch model, ModelOpt's PyTorch quantization fine-tuned by distillation (``qat_model.py``).

Every model written obeys the TensorRT ONNX parser's Q/DQ rules (``qdq_rules.py``) and is
compared with the FP32 model, one way for every model (``compare.py``): on the held-out part of its
images (``--data``, or the data it records), else the calibration images or seeded synthetic inputs.
``modelopt_log.py`` keeps ModelOpt quiet and turns its failures into one-line errors.

``QUANTIZERS`` is the one table from a precision to its converter; ``convert`` calls it. The names below are
imported when first asked for (PEP 562): a cached engine build reads a manifest's check figures
(``compare.py``) without paying for the INT8 machinery it does not run.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from pipeline.errors import EdgepipeError
from pipeline.precision import Precision, parse

# Each public name and the module that defines it, imported on first use.
_HOMES = {
    "Budget": "budget",
    "calibration_sha256": "calib",
    "Reading": "compare",
    "check_summary": "compare",
    "folder_preprocess": "compare",
    "FP16_FP32_OPS": "fp16",
    "to_fp16": "fp16",
    "count_macs": "graph",
    "int8_share": "graph",
    "keep_in_high_precision": "graph",
    "HIGH_PRECISIONS": "int8",
    "INT8_DEFAULT_EXCLUDED_OPS": "int8",
    "METHODS": "int8",
    "Int8Settings": "int8",
    "to_int8": "int8",
    "to_int8_qat": "qat",
    "MIN_OPSET": "qdq_rules",
    "check_tensorrt_qdq_rules": "qdq_rules",
    "rank_sensitive_nodes": "sensitivity",
    "PRECISION_KEY": "source",
}

__all__ = sorted([*_HOMES, "QUANTIZERS", "convert"])


def __getattr__(name: str) -> Any:
    if name == "QUANTIZERS":
        value: Any = {Precision.FP16: __getattr__("to_fp16"), Precision.INT8: __getattr__("to_int8")}
    elif name in _HOMES:
        value = getattr(importlib.import_module(f"pipeline.quantize.{_HOMES[name]}"), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def convert(
    precision: Precision | str,
    onnx_path: str | Path,
    output: str | Path,
    calib: Any = None,
    force: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """The FP16 or INT8 version of an FP32 ONNX model, through the one table of quantizers.

    ``calib`` is the INT8 calibration set (an .npz, a folder, a CalibrationSet, or None: drawn from
    the model's data); FP16 takes none. ``options``: ``Reading``'s fields (data, size, size_flag,
    preprocess, labels, workers) and, for INT8, ``Int8Settings``'s.
    """
    precision = parse(precision)
    quantizers = __getattr__("QUANTIZERS")
    if precision not in quantizers:
        raise EdgepipeError(
            f"there is no {precision.label} conversion: an exported ONNX model is already {precision.label}",
            fix=f"convert to one of {', '.join(p.value for p in quantizers)}",
        )
    return quantizers[precision](onnx_path, output, calib=calib, force=force, **options)
