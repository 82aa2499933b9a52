"""The FP32 source model of a conversion: where it may be written, what it is, the shape it runs at.

Any single-image-input ONNX (what it records is read by ``ModelInput``). The conversion needs one
fixed input shape for calibration and checks, and an opset of at least 13 for Q/DQ:
older models are upgraded with onnx's version converter and proven unchanged on ONNX Runtime
before ModelOpt sees them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from pipeline.artifacts import check_output
from pipeline.errors import EdgepipeError
from pipeline.onnxfile import set_metadata
from pipeline.onnxinfo import DEFAULT_TARGET_OPSET, ModelInfo, describe, load_model
from pipeline.opset import prove_same, upgrade_opset
from pipeline.precision import Precision, of_onnx

PRECISION_KEY = "edgepipe.precision"
PROOF_INPUTS = 8  # inputs the upgraded opset is proven on


@dataclass
class Fp32Source:
    """The FP32 model a conversion starts from, and the one input shape it is converted and checked at."""

    path: Path
    model: onnx.ModelProto  # as the user gave it
    info: ModelInfo
    size_flag: str  # the flag that sets the fixed height/width where the model leaves them open
    size: tuple[int, int] | None = None  # fixed height/width of a dynamic-H/W model
    fp32: onnx.ModelProto | None = None  # what ModelOpt converts: ``model``, upgraded where its opset is older
    upgrade: dict[str, Any] | None = None  # how the opset was upgraded and proven

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """One input sample (C,H,W or H,W,C) at the fixed shape; one clear error where it is unknown."""
        info = self.info
        if info.dynamic_hw and self.size is None:
            example = "x".join(str(d) for d in (1, *info.sample_shape(224, 224)))
            flag = (
                f"--optShapes {info.input_name}:{example}"
                if self.size_flag == "--optShapes"
                else f"{self.size_flag} 224x224"
            )
            raise EdgepipeError(
                f"input '{info.input_name}' has dynamic height/width ({info.input.text()}); edgepipe converts and checks the model at one fixed size",
                fix=f"pass the size to use, e.g. {flag} (the converted model keeps its dynamic height/width)",
            )
        height, width = self.size or (None, None)
        return info.sample_shape(height, width)

    def fix_size(self, size: tuple[int, int] | None, given_by: str | None = None) -> None:
        """Set the fixed height/width: the model's own where static (a different ``size`` is an error)."""
        if size is None:
            return
        info = self.info
        if not info.dynamic_hw:
            if tuple(size) != (info.height, info.width):
                raise EdgepipeError(
                    f"{given_by or self.size_flag} gives height x width {size[0]}x{size[1]}, but the model's input '{info.input_name}' is fixed at "
                    f"{info.height}x{info.width} ({info.input.text()})",
                    fix=f"drop {given_by or self.size_flag}, or pass {info.height}x{info.width}",
                )
            return
        if self.size is not None and tuple(size) != self.size:
            raise EdgepipeError(
                f"{given_by} is {size[0]}x{size[1]} (height x width), but the model is converted at {self.size[0]}x{self.size[1]} ({self.size_flag})",
                fix=f"give images of {self.size[0]}x{self.size[1]}, or pass {self.size_flag} {size[0]}x{size[1]}",
            )
        self.size = (int(size[0]), int(size[1]))

    def input_shape(self, batch: int = 1) -> tuple[int, ...]:
        return (batch, *self.sample_shape)

    def prepare(self, inputs: np.ndarray, described: str) -> str | None:
        """Upgrade an opset older than 13 and prove it unchanged on ``inputs``; the line to print, if any."""
        self.fp32 = self.model
        if not self.info.needs_opset_upgrade:
            return None
        upgraded = upgrade_opset(self.model, DEFAULT_TARGET_OPSET)
        batch = self.info.batch or min(len(inputs), PROOF_INPUTS)
        differences = prove_same(self.model, upgraded, np.ascontiguousarray(inputs[:batch]))
        self.fp32 = upgraded
        worst = max(differences.values(), default=0.0)
        self.upgrade = {
            "from": self.info.opset,
            "to": DEFAULT_TARGET_OPSET,
            "proven_on": f"{batch} {described}",
            "max_abs_diff": differences,
        }
        return (
            f"Opset {self.info.opset} is older than the 13 INT8 (Q/DQ) needs: upgraded to {DEFAULT_TARGET_OPSET} with onnx's version converter, "
            f"proven unchanged on {batch} {described} (max abs diff {worst:.2g})"
        )

    def write_fp32(self, folder: Path) -> Path:
        """The model ModelOpt converts, written into ``folder`` (ModelOpt reads a path and writes beside it)."""
        path = Path(folder) / "model.onnx"
        onnx.save(self.fp32 if self.fp32 is not None else self.model, str(path))
        return path


def open_fp32(
    onnx_path: str | Path, flag: str, size: tuple[int, int] | None = None, size_flag: str = "--input-size"
) -> Fp32Source:
    """The FP32 model at ``onnx_path``; refuses converted models.

    ``flag`` (--fp16/--int8) names the conversion in messages; ``size`` fixes a dynamic height/width
    (``size_flag`` is the flag that gave it: --input-size, or --optShapes for build-engine).
    """
    model = load_model(onnx_path)
    have = of_onnx(model)
    if have != Precision.FP32:
        raise EdgepipeError(
            f"{onnx_path} is already {have.label}; {flag} needs the FP32 model", fix="pass the FP32 .onnx model"
        )
    source = Fp32Source(Path(onnx_path), model, describe(model), size_flag)
    source.fix_size(size)
    return source


def check_paths(onnx_path: str | Path, output: str | Path, force: bool) -> Path:
    """``output`` as a Path, refused when it is the input model or exists without ``force``."""
    output = Path(output)
    if output.exists() and Path(onnx_path).exists() and output.resolve() == Path(onnx_path).resolve():
        raise EdgepipeError(f"the output {output} is the input model", fix="pass another -o path")
    return check_output(output, force)


def carry_metadata(
    source: onnx.ModelProto, target: onnx.ModelProto, precision: Precision, extra: dict[str, str] | None = None
) -> None:
    """ModelOpt drops metadata_props: copy the source's (its record, if any) and record the precision."""
    values = {prop.key: prop.value for prop in source.metadata_props}
    values.update({PRECISION_KEY: precision.value, **(extra or {})})
    set_metadata(target, values)
    target.producer_name = source.producer_name or "edgepipe"
