"""The FP32 source model of a conversion: where it may be written, that it is FP32, what it carries over."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from pipeline.artifacts import check_output
from pipeline.errors import EdgepipeError
from pipeline.onnxfile import load_onnx, onnx_config, set_metadata
from pipeline.precision import Precision, of_onnx

PRECISION_KEY = "edgepipe.precision"


def check_paths(onnx_path: str | Path, output: str | Path, force: bool) -> Path:
    """``output`` as a Path, refused when it is the input model or exists without ``force``."""
    output = Path(output)
    if output.exists() and Path(onnx_path).exists() and output.resolve() == Path(onnx_path).resolve():
        raise EdgepipeError(f"the output {output} is the input model", fix="pass another -o path")
    return check_output(output, force)


def load_fp32(onnx_path: str | Path, flag: str) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The FP32 source model and its edgepipe config; refuses already converted models."""
    model = load_onnx(onnx_path)
    config = onnx_config(model, onnx_path)
    have = of_onnx(model)
    if have != Precision.FP32:
        raise EdgepipeError(
            f"{onnx_path} is already {have.label}; {flag} needs the FP32 model",
            fix="pass the FP32 .onnx written by 'edgepipe export'",
        )
    return model, config


def carry_metadata(source: onnx.ModelProto, target: onnx.ModelProto, precision: Precision, extra: dict[str, str] | None = None) -> None:
    """ModelOpt drops metadata_props: copy edgepipe's config to the result and record its precision."""
    values = {prop.key: prop.value for prop in source.metadata_props}
    values.update({PRECISION_KEY: precision.value, **(extra or {})})
    set_metadata(target, values)
    target.producer_name = source.producer_name or "edgepipe"
