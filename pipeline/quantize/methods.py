"""Which activation ranges an INT8 model gets: each method built and checked, the best kept, every one recorded.

``--method auto`` (the default) runs one calibration pass with histograms kept (``ranges.collect``)
and builds a PTQ model for each of ``ranges.AUTO_CANDIDATES`` with those ranges injected through
ModelOpt's calibration cache: no calibration pass more. Each is checked against FP32 on the check
images; the best (closest to the budget, then top-1 where labelled, else agreement, then cosine)
is kept, then bias correction (``bias.py``) is tried on it and kept where it does better. A named
method builds that one (``entropy``: ModelOpt's own calibrator); bias correction then is asked for
by ``--bias-correction``. Every candidate is a row of ``tried``: method, agreement, top-1 where
labelled, cosine, INT8 share of the MACs, seconds.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from pipeline.errors import EdgepipeError
from pipeline.progress import info as say
from pipeline.quantize.bias import correct_bias
from pipeline.quantize.graph import int8_share
from pipeline.quantize.ranges import (
    AUTO,
    AUTO_CANDIDATES,
    Histogram,
    Method,
    collect,
    parse_method,
    ranges_for,
    too_few_values,
    write_cache,
)

BIAS = "+bias"  # the suffix of a bias-corrected candidate's name
# Ops whose output range ONNX Runtime fixes (Softmax: [0, 1]); ModelOpt's calibrators keep it so.
_FIXED_RANGES = {"Softmax": 1.0}


@dataclass
class Chosen:
    model: onnx.ModelProto
    figures: dict[str, Any]
    method: str
    tried: list[dict[str, Any]]
    histogram_seconds: float | None = None
    # the kept method again with other nodes kept out of INT8 (the budget search re-quantizes with it)
    rebuild: Callable[[list[str]], onnx.ModelProto] | None = None


@dataclass
class Candidates:
    """What building and checking a candidate needs: ``build(nodes, cache)`` runs ModelOpt, ``measure`` checks,
    ``shortfall`` says how far figures are from the budget (0: met)."""

    fp32: onnx.ModelProto
    calib_x: np.ndarray
    build: Callable[[list[str], Path | None], onnx.ModelProto]
    measure: Callable[[bytes], dict[str, Any]]
    shortfall: Callable[[dict[str, Any]], float]
    macs: dict[str, int] | None = None

    def rank(self, figures: dict[str, Any]) -> tuple:
        """Larger is better: closest to the budget, then top-1 (labelled) or agreement, then agreement, then cosine."""
        top1 = figures.get("top1")
        return (
            -self.shortfall(figures),
            figures["agreement"] if top1 is None else top1,
            figures["agreement"],
            figures.get("cosine") or 0.0,
        )


def choose(method: Method, bias_correction: bool | None, nodes: list[str], on: Candidates) -> Chosen:
    """The INT8 model of ``method`` (auto: the best candidate), bias-corrected where asked or (auto) where it helps."""
    names = list(AUTO_CANDIDATES) if method.kind == AUTO else [method.name]
    histograms, seconds = None, None
    if any(parse_method(name).from_histograms for name in names):
        started = time.perf_counter()
        histograms = collect(on.fp32, on.calib_x)
        seconds = round(time.perf_counter() - started, 2)
        say(f"INT8 ranges: one calibration pass, histograms of {len(histograms)} tensors in {seconds:.1f} s")
        names = usable_methods(names, too_few_values(histograms, len(on.calib_x)), method)
    tried, built = [], {}
    for name in names:
        started = time.perf_counter()
        model = _build(parse_method(name), nodes, histograms, on)
        built[name] = model, on.measure(model.SerializeToString())
        tried.append(_row(name, built[name][0], built[name][1], started, on.macs))
    best = max(names, key=lambda name: on.rank(built[name][1])) if len(names) > 1 else names[0]
    model, figures = built[best]
    if bias_correction or (bias_correction is None and method.kind == AUTO):
        started = time.perf_counter()
        corrected = correct_bias(on.fp32, model, on.calib_x)
        corrected_figures = on.measure(corrected.SerializeToString())
        tried.append(_row(best + BIAS, corrected, corrected_figures, started, on.macs))
        if bias_correction or on.rank(corrected_figures) > on.rank(figures):
            model, figures, best = corrected, corrected_figures, best + BIAS
    if len(tried) > 1:
        say("INT8 methods tried: " + "; ".join(_text(row) for row in tried) + f"; kept {best}")
    kept_method, corrected = parse_method(best.removesuffix(BIAS)), best.endswith(BIAS)

    def rebuild(kept: list[str]) -> onnx.ModelProto:
        again = _build(kept_method, [*nodes, *kept], histograms, on)
        return correct_bias(on.fp32, again, on.calib_x) if corrected else again

    return Chosen(model, figures, best, tried, seconds, rebuild)


def usable_methods(names: list[str], too_few: str | None, method: Method) -> list[str]:
    """The methods the histograms can serve: with too few values, auto keeps ``max`` alone; a named method fails."""
    if too_few is None or names == ["max"]:
        return names
    if method.kind == AUTO:
        say(f"INT8 ranges: {too_few}: max ranges only (more calibration images let auto compare methods)")
        return ["max"]
    raise EdgepipeError(too_few, fix="give more calibration images (--calib), or use --method max or entropy")


def _build(method: Method, nodes: list[str], histograms: dict[str, Histogram] | None, on: Candidates):
    if not method.from_histograms:
        return on.build(nodes, None)
    amaxes = ranges_for(histograms, method)
    amaxes.update(fixed_ranges(on.fp32, amaxes))
    with tempfile.TemporaryDirectory(prefix="edgepipe-ranges-") as folder:
        return on.build(nodes, write_cache(Path(folder) / "ranges.cache", amaxes))


def fixed_ranges(model: onnx.ModelProto, amaxes: dict[str, float]) -> dict[str, float]:
    """Outputs whose range the op fixes (Softmax: 1), as ModelOpt's calibrators set them."""
    return {
        out: _FIXED_RANGES[node.op_type]
        for node in model.graph.node
        if node.op_type in _FIXED_RANGES
        for out in node.output
        if out in amaxes
    }


def _row(name: str, model, figures: dict[str, Any], started: float, macs) -> dict[str, Any]:
    row = {"method": name, "agreement": figures["agreement"], "cosine": figures.get("cosine")}
    if figures.get("top1") is not None:
        row.update(top1=figures["top1"], delta=figures["delta"])
    row["int8_share"] = int8_share(model, macs)["int8_share"] if macs else None
    row["seconds"] = round(time.perf_counter() - started, 2)
    return row


def _text(row: dict[str, Any]) -> str:
    top1 = f"top-1 {row['top1']:.2f}%, " if row.get("top1") is not None else ""
    return f"{row['method']} {top1}agreement {row['agreement']:.2f}%"
