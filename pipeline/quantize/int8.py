"""INT8: ModelOpt post-training quantization (explicit Q/DQ), checked against FP32, within an accuracy budget.

Q/DQ scales come from calibration images (``calib.py``: never random data); attention gates
(Sigmoid, Softmax) stay in higher precision. The result is compared with the FP32 model on the
held-out part of the model's images (``compare.py``). With a budget
(``budget.py``: --max-drop, --min-agreement) the most sensitive nodes are kept in higher
precision until it holds. The result says what stayed in higher precision and what share of the
MACs runs in INT8 (``graph.py``).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from pipeline.artifacts import Kind, atomic_output, write_manifest
from pipeline.defaults import BUDGET_DEFAULT, HIGH_PRECISIONS
from pipeline.digest import sha256_file
from pipeline.errors import EdgepipeError
from pipeline.precision import Precision
from pipeline.progress import info as say
from pipeline.quantize.budget import Budget, Outcome, Trial, default_budget, output_kind, search
from pipeline.quantize.calib import calibration_images
from pipeline.quantize.compare import (
    Comparison,
    Images,
    Reading,
    check_images,
    folder_preprocess,
    model_data_for,
    stored_record,
)
from pipeline.quantize.coverage import coverage
from pipeline.quantize.depthwise import WHY as DEPTHWISE_WHY
from pipeline.quantize.depthwise import depthwise_convs, depthwise_first
from pipeline.quantize.fusion import fusion_exclusions
from pipeline.quantize.graph import count_macs, keep_in_high_precision
from pipeline.quantize.linear_cover import cover_linear_layers
from pipeline.quantize.methods import Candidates, choose, exact_names
from pipeline.quantize.modelopt_log import last_line, modelopt_error, quiet_modelopt
from pipeline.quantize.prepare import check_names, check_quantizable, clean_up
from pipeline.quantize.qdq_rules import check_tensorrt_qdq_rules
from pipeline.quantize.ranges import METHOD_NAMES, constants_as_initializers, parse_method, write_cache
from pipeline.quantize.remainder import build as build_remainder
from pipeline.quantize.remainder import ceiling
from pipeline.quantize.source import Fp32Source, carry_metadata, check_paths, open_fp32

METHODS = METHOD_NAMES
CLEAN_UP_PROOF_IMAGES = 8  # calibration images the graph clean-up is proven unchanged on
CACHE_IMAGES = 8  # what ModelOpt calibrates on when edgepipe's ranges replace its scales
# INT8 keeps attention gates in higher precision: a gate in [0, 1] rounded to 8 bits scales every
# channel/position of the features it multiplies, and SE/CBAM/self-attention accuracy depends on it.
INT8_DEFAULT_EXCLUDED_OPS = ("HardSigmoid", "Sigmoid", "Softmax")


@dataclass(frozen=True)
class Int8Settings:
    """How INT8 is made: the calibration method, what stays in higher precision, and the accuracy budget."""

    method: str = "auto"
    exclude_ops: tuple[str, ...] = ()
    exclude_nodes: tuple[str, ...] = ()
    include_ops: tuple[str, ...] = ()
    high_precision: str = "fp16"
    max_drop: float | str | None = BUDGET_DEFAULT  # None: plain PTQ, asked for by name (--max-drop none)
    min_agreement: float | None = None
    min_cosine: float | None = None
    bias_correction: bool | None = None  # None: auto tries it, a named method does not
    smoothquant: bool | None = None  # None: tried where the model has LayerNorm -> MatMul, kept where it helps

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", parse_method(self.method).name)
        if self.high_precision not in HIGH_PRECISIONS:
            raise EdgepipeError(
                f"unknown high precision {self.high_precision!r}", fix=f"use one of {', '.join(HIGH_PRECISIONS)}"
            )
        for key in ("exclude_ops", "exclude_nodes", "include_ops"):
            object.__setattr__(self, key, tuple(getattr(self, key)))

    def asked_budget(self) -> Budget | None:
        """The budget the flags ask for; None where none is given (the model's outputs then decide)."""
        if self.max_drop == BUDGET_DEFAULT and self.min_agreement is None and self.min_cosine is None:
            return None
        return Budget(None if self.max_drop == BUDGET_DEFAULT else self.max_drop, self.min_agreement, self.min_cosine)

    def excluded_ops(self) -> list[str]:
        return sorted((set(INT8_DEFAULT_EXCLUDED_OPS) - set(self.include_ops)) | set(self.exclude_ops))

    def recipe(self, kept: list[str]) -> dict[str, Any]:
        nodes = list(self.exclude_nodes) + kept
        return {
            "method": self.method,
            "excluded_ops": self.excluded_ops(),
            "excluded_nodes": nodes,
            "high_precision": self.high_precision,
        }


def to_int8(
    onnx_path: str | Path, output: str | Path, calib: Any = None, force: bool = False, **options: Any
) -> dict[str, Any]:
    """Write an explicit Q/DQ INT8 version of ``onnx_path`` and return its figures against FP32.

    ``calib``: a calibration set, an .npz or a folder (None: drawn from the model's data, ``--data``
    or what it records). ``options``: the fields of ``Int8Settings`` (method, bias_correction,
    exclude_ops, exclude_nodes, include_ops, high_precision, max_drop, min_agreement, min_cosine) and
    of ``Reading`` (data, size, size_flag, preprocess, labels, workers). No budget given: the default
    one for the model's outputs (``budget.default_budget``); ``max_drop=None``: plain PTQ.
    """
    started = time.perf_counter()
    settings, reading = _split(options)
    asked = settings.asked_budget()
    budget = asked or Budget()
    output = check_paths(onnx_path, output, force)
    source = open_fp32(onnx_path, "--int8", reading.size, reading.size_flag)
    check_quantizable(source.model)
    check_names(source.model, list(settings.exclude_ops + settings.include_ops), list(settings.exclude_nodes))
    model_input, model_data = model_data_for(source, reading)
    calib_images, calib_info = calibration_images(calib, model_data, source, model_input, reading.__dict__)
    compare_on, comparison = _comparison(source, model_data, calib_images, budget, reading.workers)
    budget = asked or _default_budget(compare_on, comparison)
    if not budget.active:
        say("INT8 without an accuracy budget (--max-drop none): plain PTQ, whatever it loses against FP32")
    outcome, attempts, macs, cleaned, chosen = _quantized(
        source, settings, budget, calib_images, compare_on, comparison
    )
    quantized, figures, kept = outcome.model, outcome.figures, outcome.kept_nodes
    recipe = {**settings.recipe(kept), "method": chosen.method}
    carry_metadata(source.model, quantized, Precision.INT8, {"edgepipe.int8": json.dumps(recipe, sort_keys=True)})
    stored_record(model_input, model_data, quantized)  # later stages read the images the same way, with no flags
    check_tensorrt_qdq_rules(quantized)
    with atomic_output(output) as tmp:
        onnx.save(quantized, str(tmp))
    seconds = round(time.perf_counter() - started, 2)
    params = {  # what was asked for (the reuse rule compares these); what it led to is in the facts
        "precision": "int8",
        **settings.recipe([]),
        **(asked or Budget()).record(),
        "input_shape": list(source.input_shape()),
        "data": reading.data,
        "preprocess": folder_preprocess(source.model, reading.data, reading.preprocess, calib),
    }
    facts = {
        "methods_tried": chosen.tried,
        "histogram_seconds": chosen.histogram_seconds,
        "kept_nodes": kept,
        "kept_op_types": outcome.kept_op_types,
        "attempts": attempts,
        "calibration": calib_info,
        "check": comparison.record(),
        "macs": macs,
        "clean_up": cleaned,
        "opset_upgrade": source.upgrade,
        "budget": budget.record(),
    }
    inputs = {"onnx": sha256_file(onnx_path), "calibration": calib_info["sha256"]}
    write_manifest(
        output,
        Kind.ONNX,
        inputs=inputs,
        params=params,
        precision=Precision.INT8,
        accuracy=figures,
        seconds=seconds,
        **facts,
    )
    result = {"onnx": str(output), "source": str(onnx_path), "precision": "int8", "seconds": seconds}
    return {**result, **recipe, **budget.record(), **facts, **figures}


def _split(options: dict[str, Any]) -> tuple[Int8Settings, Reading]:
    """``to_int8``'s options: how INT8 is made, and how the images are read."""
    names = set(Int8Settings.__dataclass_fields__)
    settings = Int8Settings(**{k: v for k, v in options.items() if k in names})
    return settings, Reading(**{k: v for k, v in options.items() if k not in names})


def _comparison(
    source: Fp32Source, model_data, calib_images: Images, budget: Budget, workers
) -> tuple[Images, Comparison]:
    """What INT8 is compared with FP32 on (held-out images, else the calibration images), and the comparison."""
    compare_on = check_images(model_data, source, workers) if model_data is not None else _on_calibration(calib_images)
    budget.check_images(compare_on.labelled, compare_on.text)
    note = source.prepare(calib_images.x, "calibration images")
    if note:
        say(note)
    comparison = Comparison(source.fp32.SerializeToString(), compare_on, source.info)
    record = comparison.record()
    say(f"INT8 is checked against FP32 on {record['text']}" + (f"; {record['hint']}" if record["hint"] else ""))
    return compare_on, comparison


def _default_budget(compare_on: Images, comparison: Comparison) -> Budget:
    """The budget for the model's first output when none is given (``budget.default_budget``), said."""
    budget, why = default_budget(output_kind(comparison.reference[0][1][0].shape), compare_on.labelled)
    say(f"INT8 budget by default for {why}: {budget.text()} (--max-drop none for plain PTQ)")
    return budget


def _on_calibration(calib_images: Images) -> Images:
    """With no images of the model's own to compare on, the calibration images, and a hint."""
    text = f"the {calib_images.text}"
    return Images(calib_images.x, calib_images.y, "calibration", text, "pass --data for held-out images")


def _quantized(
    source: Fp32Source,
    settings: Int8Settings,
    budget: Budget,
    calib: Images,
    compare_on: Images,
    comparison: Comparison,
):
    """ModelOpt's INT8 model of the cleaned-up graph by the method's ranges (``methods.choose``), then (with a
    budget it misses) the search that re-quantizes with the same ranges."""
    source.fp32, cleaned = clean_up(source.fp32, calib.x[: source.info.batch or CLEAN_UP_PROOF_IMAGES])
    fused = fusion_exclusions(source.fp32, settings.excluded_ops())
    macs = _macs_per_node(source)
    quantizer = _Int8Quantizer(source, calib.x, settings, list(fused), macs)
    on = Candidates(
        source.fp32, calib.x, quantizer.run, comparison.measure, budget.shortfall, macs, settings.smoothquant
    )
    started, fixed = time.perf_counter(), settings.exclude_nodes
    chosen = choose(parse_method(settings.method), settings.bias_correction, [], on)
    trial = Trial(chosen.rebuild, quantizer.ceiling, comparison.measure, chosen.fp32, compare_on.x, macs, fixed)
    figures, row = trial.run(chosen.model, [], "plain", started)
    attempts, outcome = [row], Outcome(chosen.model, figures)
    if budget.active and not budget.met(figures):
        outcome = depthwise_first(budget, trial, quantizer.keep_out, chosen.rebuild, outcome, attempts)
    if budget.active and not budget.met(outcome.figures):
        outcome = search(budget, trial, outcome, attempts)
        outcome.kept_nodes = list(dict.fromkeys([*quantizer.kept_out, *outcome.kept_nodes]))
    reasons = {
        **{
            node.name: f"--exclude-op {node.op_type}"
            for node in source.fp32.graph.node
            if node.op_type in settings.exclude_ops
        },
        **dict.fromkeys(settings.exclude_nodes, "--exclude-node"),
        **dict.fromkeys(outcome.kept_nodes, "kept in higher precision by the accuracy budget"),
        **dict.fromkeys(quantizer.kept_out, DEPTHWISE_WHY),
    }
    return outcome, attempts, coverage(outcome.model, source.fp32, macs, {**fused, **reasons}), cleaned, chosen


def _macs_per_node(source: Fp32Source) -> dict[str, int] | None:
    """MACs of each Conv/MatMul/Gemm for one sample; None where shape inference cannot follow the model."""
    try:
        return count_macs(source.fp32, source.input_shape(1))
    except EdgepipeError:
        return None


class _Int8Quantizer:
    """ModelOpt ONNX PTQ of the source model in a private temporary folder (its working folder too), quietly.

    ModelOpt quantizes with an FP32 remainder; ``remainder.build`` then converts what is not
    quantized the way --fp16 does. ``fused`` nodes (``fusion.py``) are always excluded.
    """

    def __init__(self, source: Fp32Source, images: np.ndarray, settings: Int8Settings, fused: list[str], macs=None):
        self.source, self.images, self.settings, self.fused, self.macs = source, images, settings, fused, macs
        self.kept_out: list[str] = []  # nodes every build feeds unquantized inputs after PTQ (``depthwise.py``)

    def keep_out(self, names: list[str]) -> None:
        self.kept_out = list(names)

    def run(self, nodes_to_exclude: list[str], amaxes: dict[str, float] | None = None, fp32=None) -> onnx.ModelProto:
        """ModelOpt's PTQ of ``fp32`` (None: the source's graph); with ``amaxes`` (ranges edgepipe chose, by tensor) their
        scales replace the calibrated ones, so a few images calibrate (ModelOpt still runs its calibrator), method
        ``max``, and the MatMuls its placement leaves out are quantized at them too (``linear_cover.py``)."""
        from modelopt.onnx.quantization import quantize  # ModelOpt takes seconds to import: only conversions pay

        few = self.images[: max(CACHE_IMAGES, self.source.info.batch or 1)]
        images, method = (self.images, self.settings.method) if amaxes is None else (few, "max")
        model = self.source.fp32 if fp32 is None else fp32
        depthwise = set(depthwise_convs(model))  # fed unquantized inputs after PTQ: see ``depthwise.py``
        named = [*self.settings.exclude_nodes, *nodes_to_exclude]
        after = [name for name in named if name in depthwise]
        excluded = exact_names([*self.fused, *(name for name in named if name not in depthwise)])
        with tempfile.TemporaryDirectory(prefix="edgepipe-int8-") as folder, contextlib.chdir(folder):
            source = Path(folder) / "model.onnx"  # ModelOpt writes intermediate files beside its input
            onnx.save(constants_as_initializers(model) if amaxes is not None else model, str(source))
            cache = None if amaxes is None else write_cache(Path(folder) / "ranges.cache", amaxes)
            target = Path(folder) / "model.int8.onnx"
            with quiet_modelopt() as log:
                try:
                    quantize(
                        str(source),
                        quantize_mode="int8",
                        calibration_data=images,
                        calibration_method=method,
                        calibration_cache_path=None if cache is None else str(cache),
                        calibration_eps=["cpu"],
                        op_types_to_exclude=self.settings.excluded_ops() or None,
                        nodes_to_exclude=excluded or None,
                        output_path=str(target),
                        log_level="WARNING",
                        high_precision_dtype="fp32",
                    )
                except Exception as exc:  # ModelOpt raises many types on graphs it cannot quantize
                    raise modelopt_error("INT8 quantization", exc, log)
                if not target.is_file():
                    tail = last_line(log)
                    raise EdgepipeError(
                        "ModelOpt wrote no quantized model" + (f" (its log ends: {tail})" if tail else ""),
                        fix="pass an FP32 ONNX model; exclude the failing op with --exclude-op",
                    )
            quantized = onnx.load(str(target))
        if amaxes is not None and "MatMul" not in self.settings.excluded_ops():
            kept = {*named, *self.fused, *self.kept_out}
            quantized, _ = cover_linear_layers(quantized, amaxes, kept, self.macs)
        present = {node.name for node in quantized.graph.node}
        # a tensor quantized for one reader is quantized for all: the fused nodes read it unquantized again
        quantized = keep_in_high_precision(
            quantized, [n for n in [*self.fused, *self.kept_out, *after] if n in present]
        )
        return build_remainder(quantized, self.settings.high_precision)

    def ceiling(self) -> onnx.ModelProto:
        """No Q/DQ at all, the remainder as built: the best any node set kept out of INT8 can reach."""
        return ceiling(self.source.fp32, self.settings.high_precision)
