"""FP16: ModelOpt AutoCast converts the graph; I/O and overflow-prone ops stay FP32.

FP16 needs no data. It is compared with FP32 on the held-out part of the model's images (``--data``,
or the data it records) or, without any, on seeded synthetic inputs, and edgepipe says which.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import onnx

from pipeline.artifacts import Kind, atomic_output, write_manifest
from pipeline.digest import sha256_file
from pipeline.precision import Precision
from pipeline.progress import info as say
from pipeline.quantize.compare import (
    Comparison,
    Reading,
    check_images,
    folder_preprocess,
    model_data_for,
    stored_record,
    synthetic,
)
from pipeline.quantize.modelopt_log import modelopt_error, quiet_modelopt
from pipeline.quantize.qdq_rules import check_tensorrt_qdq_rules
from pipeline.quantize.source import Fp32Source, carry_metadata, check_paths, open_fp32

# FP16 keeps these in FP32: reductions and softmax accumulate and overflow (65504 is FP16's max),
# normalization divides by a variance, exp/pow/sqrt/log/reciprocal overflow or lose precision.
FP16_FP32_OPS = (
    "ReduceMean",
    "ReduceSum",
    "ReduceSumSquare",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "GlobalLpPool",
    "Softmax",
    "LogSoftmax",
    "BatchNormalization",
    "LayerNormalization",
    "InstanceNormalization",
    "GroupNormalization",
    "LpNormalization",
    "Exp",
    "Pow",
    "Sqrt",
    "Log",
    "Reciprocal",
)


def to_fp16(
    onnx_path: str | Path, output: str | Path, calib: Any = None, force: bool = False, **options: Any
) -> dict[str, Any]:
    """Write an FP16 version of ``onnx_path`` (I/O and overflow-prone ops FP32); return its figures against FP32.

    ``calib`` is not used (FP16 needs no calibration); it is taken so that every entry of
    ``QUANTIZERS`` is called the same way. ``options``: the fields of ``Reading`` (data, size,
    size_flag, preprocess, labels, workers).
    """
    started = time.perf_counter()
    reading = Reading(**options)
    output = check_paths(onnx_path, output, force)
    source = open_fp32(onnx_path, "--fp16", reading.size, reading.size_flag)
    model_input, model_data = model_data_for(source, reading)
    comparison = _comparison(source, model_data, reading.workers)
    record = comparison.record()
    converted, present = _convert(source)
    carry_metadata(source.model, converted, Precision.FP16)
    stored_record(model_input, model_data, converted)  # later stages read the images the same way, with no flags
    check_tensorrt_qdq_rules(converted)
    figures = comparison.measure(converted.SerializeToString())
    with atomic_output(output) as tmp:
        onnx.save(converted, str(tmp))
    params = {
        "precision": "fp16",
        "keep_io_types": True,
        "fp32_ops": present,
        "input_shape": list(source.input_shape()),
        "data": reading.data,
        "preprocess": folder_preprocess(source.model, reading.data, reading.preprocess),
    }
    seconds = round(time.perf_counter() - started, 2)
    facts = {"check": record, "opset_upgrade": source.upgrade}
    inputs = {"onnx": sha256_file(onnx_path)}
    write_manifest(
        output,
        Kind.ONNX,
        inputs=inputs,
        params=params,
        precision=Precision.FP16,
        accuracy=figures,
        seconds=seconds,
        **facts,
    )
    return {
        "onnx": str(output),
        "source": str(onnx_path),
        "precision": "fp16",
        "seconds": seconds,
        "fp32_ops": present,
        **facts,
        **figures,
    }


def _comparison(source: Fp32Source, model_data, workers: int | None) -> Comparison:
    """FP32 run once on the held-out images (or seeded synthetic inputs), to compare FP16 with."""
    if model_data is not None:
        images = check_images(model_data, source, workers)
    else:
        images = synthetic(source.info, source.sample_shape)
        images.hint = "pass --data for your images"
    note = source.prepare(images.x, "synthetic inputs" if images.what == "synthetic" else "held-out images")
    if note:
        say(note)
    comparison = Comparison(source.fp32.SerializeToString(), images, source.info)
    record = comparison.record()
    say(f"FP16 is checked against FP32 on {record['text']}" + (f"; {record['hint']}" if record["hint"] else ""))
    return comparison


def _convert(source: Fp32Source) -> tuple[onnx.ModelProto, list[str]]:
    """ModelOpt AutoCast of the source, quietly; and the FP32-kept op types present."""
    from modelopt.onnx.autocast import convert_to_mixed_precision  # ModelOpt takes seconds to import

    present = sorted({node.op_type for node in source.model.graph.node} & set(FP16_FP32_OPS))
    with tempfile.TemporaryDirectory(prefix="edgepipe-fp16-") as folder, quiet_modelopt() as log:
        try:
            converted = convert_to_mixed_precision(
                onnx_path=str(source.write_fp32(Path(folder))),
                low_precision_type="fp16",
                keep_io_types=True,
                op_types_to_exclude=list(FP16_FP32_OPS),
                providers=["cpu"],
            )
        except Exception as exc:  # ModelOpt raises many types on graphs it cannot convert
            raise modelopt_error("FP16 conversion", exc, log)
    return converted, present
