"""FP16: ModelOpt AutoCast converts the graph; I/O and overflow-prone ops stay FP32.

FP16 needs no data. An edgepipe export is checked on its held-out split; any other model on the
user's images (``--data``) or, without them, on seeded synthetic inputs, and edgepipe says which.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import onnx

from pipeline.artifacts import Kind, atomic_output, sha256_file, write_manifest
from pipeline.precision import Precision
from pipeline.progress import info as say
from pipeline.quantize.checks import Check, synthetic, user_images
from pipeline.quantize.heldout import HeldOut
from pipeline.quantize.modelopt_log import modelopt_error, quiet_modelopt
from pipeline.quantize.qdq_rules import check_tensorrt_qdq_rules
from pipeline.quantize.source import carry_metadata, check_paths, open_source

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
    onnx_path: str | Path,
    output: str | Path,
    force: bool = False,
    data: str | None = None,
    calib: Any = None,
    *,
    size: tuple[int, int] | None = None,
    size_flag: str = "--input-size",
    preprocess: Any = None,
    labels: str | Path | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Write an FP16 version of ``onnx_path`` (I/O and overflow-prone ops FP32); return its figures against FP32.

    ``calib`` is not used (FP16 needs no calibration); it is taken so that every entry of
    ``QUANTIZERS`` is called the same way. ``size``: height and width for a model with dynamic ones.
    ``preprocess`` (PreprocessFlags), ``labels`` and ``workers``: how a folder given as ``data`` is read.
    """
    started = time.perf_counter()
    output = check_paths(onnx_path, output, force)
    source = open_source(onnx_path, "--fp16", size, size_flag)
    if source.foreign:
        if data is not None:
            _, images = user_images(
                data,
                source.model,
                source.info,
                source.size and source.sample_shape,
                preprocess=preprocess,
                labels=labels,
                workers=workers,
            )
            if source.info.dynamic_hw and source.size is None:
                source.fix_size(tuple(images.x.shape[a] for a in source.info.hw_axes), f"--data {Path(data).name}")
        else:
            images = synthetic(source.info, source.sample_shape)
            images.hint = "pass --data for your images"
        note = source.prepare(images.x, "synthetic inputs" if images.what == "synthetic" else "held-out images")
        if note:
            say(note)
        check = Check(source.fp32.SerializeToString(), images, source.info)
    else:
        check = HeldOut(onnx_path, source.config, data)
        source.prepare(check.images, "held-out images")
    record = check.record()
    say(f"FP16 is checked against FP32 on {record['text']}" + (f"; {record['hint']}" if record["hint"] else ""))

    from modelopt.onnx.autocast import (
        convert_to_mixed_precision,
    )  # ModelOpt takes seconds to import: only conversions pay

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
    carry_metadata(source.model, converted, Precision.FP16)
    preprocess_used = check.images.preprocess if source.foreign else None
    if preprocess_used is not None:  # later stages read the user's images the same way, with no flags
        preprocess_used.store_in(converted)
    check_tensorrt_qdq_rules(converted)
    figures = check.measure(converted.SerializeToString())
    with atomic_output(output) as tmp:
        onnx.save(converted, str(tmp))
    params = {
        "precision": "fp16",
        "keep_io_types": True,
        "fp32_ops": present,
        "input_shape": list(source.input_shape()),
        "data": data,
        "preprocess": preprocess_used and preprocess_used.to_dict(),
    }
    seconds = round(time.perf_counter() - started, 2)
    facts = {"check": check.record(), "opset_upgrade": source.upgrade}
    write_manifest(
        output,
        Kind.ONNX,
        inputs={"onnx": sha256_file(onnx_path)},
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
