"""FP16: ModelOpt AutoCast converts the graph; I/O and overflow-prone ops stay FP32."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import onnx

from pipeline.artifacts import Kind, atomic_output, sha256_file, write_manifest
from pipeline.precision import Precision
from pipeline.quantize.heldout import HeldOut
from pipeline.quantize.modelopt_log import modelopt_error, quiet_modelopt
from pipeline.quantize.qdq_rules import check_tensorrt_qdq_rules
from pipeline.quantize.source import carry_metadata, check_paths, load_fp32

# FP16 keeps these in FP32: reductions and softmax accumulate and overflow (65504 is FP16's max),
# normalization divides by a variance, exp/pow/sqrt/log/reciprocal overflow or lose precision.
FP16_FP32_OPS = (
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
    "Softmax", "LogSoftmax", "BatchNormalization", "LayerNormalization", "InstanceNormalization",
    "GroupNormalization", "LpNormalization", "Exp", "Pow", "Sqrt", "Log", "Reciprocal",
)


def to_fp16(onnx_path: str | Path, output: str | Path, force: bool = False, data: str | None = None, calib: Any = None) -> dict[str, Any]:
    """Write an FP16 version of ``onnx_path`` (I/O and overflow-prone ops FP32); return its figures.

    ``calib`` is not used (FP16 needs no calibration); it is taken so that every entry of
    ``QUANTIZERS`` is called the same way.
    """
    started = time.perf_counter()
    output = check_paths(onnx_path, output, force)
    model, config = load_fp32(onnx_path, "--fp16")
    from modelopt.onnx.autocast import convert_to_mixed_precision  # ModelOpt takes seconds to import: only conversions pay

    present = sorted({node.op_type for node in model.graph.node} & set(FP16_FP32_OPS))
    with quiet_modelopt() as log:
        try:
            converted = convert_to_mixed_precision(
                onnx_path=str(onnx_path), low_precision_type="fp16", keep_io_types=True,
                op_types_to_exclude=list(FP16_FP32_OPS), providers=["cpu"],
            )
        except Exception as exc:  # ModelOpt raises many types on graphs it cannot convert
            raise modelopt_error("FP16 conversion", exc, log)
    carry_metadata(model, converted, Precision.FP16)
    check_tensorrt_qdq_rules(converted)
    figures = HeldOut(onnx_path, config, data).measure(converted.SerializeToString())
    with atomic_output(output) as tmp:
        onnx.save(converted, str(tmp))
    params = {"precision": "fp16", "keep_io_types": True, "fp32_ops": present}
    seconds = round(time.perf_counter() - started, 2)
    write_manifest(output, Kind.ONNX, inputs={"onnx": sha256_file(onnx_path)}, params=params, precision=Precision.FP16, accuracy=figures, seconds=seconds)
    return {"onnx": str(output), "source": str(onnx_path), "precision": "fp16", "seconds": seconds, "fp32_ops": present, **figures}
