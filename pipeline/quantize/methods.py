"""Which activation ranges an INT8 model gets: each method built and checked, the best kept, every one recorded.

``--method auto`` (the default) runs one calibration pass with histograms kept (``ranges.collect``)
and builds a PTQ model for each of ``ranges.AUTO_CANDIDATES`` with those ranges injected through
ModelOpt's calibration cache: no calibration pass more. Each is checked against FP32 on the check
images; the best (closest to the budget, then top-1 where labelled, else agreement, then cosine)
is kept, then bias correction is tried on it both ways (``bias.py``: each Conv/Gemm's own error;
``linear_bias.py``, where the model has MatMul + bias Add: linear layers in order, each taking back
the shift quantization upstream leaves) and the better kept where it does better. A named method
builds that one (``entropy``: ModelOpt's own calibrator); bias correction (the better way) then is
asked for by ``--bias-correction``. Where the model has LayerNorm -> MatMul/Gemm, SmoothQuant
(``smoothquant.py``, maxima from the same pass) is tried on the kept one the same way (auto: kept
where it does better; ``--smoothquant``: always; ``--no-smoothquant``: never), built from the
rewritten FP32 graph, whose ranges differ from the pass's only on the rewritten tensors (one plain
forward pass over the calibration images re-reads those). Every candidate is a row of ``tried``:
method, agreement, top-1 where labelled, cosine, INT8 share of the MACs, seconds (and for
SmoothQuant what it rewrote).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from pipeline.errors import EdgepipeError
from pipeline.fidelity import relative_change
from pipeline.onnxinfo import run_onnxruntime
from pipeline.progress import info as say
from pipeline.quantize.bias import correct_bias
from pipeline.quantize.graph import int8_share
from pipeline.quantize.linear_bias import correct_linear_biases, linear_sites
from pipeline.quantize.ranges import (
    AUTO,
    AUTO_CANDIDATES,
    Histogram,
    Method,
    collect,
    parse_method,
    ranges_for,
    too_few_values,
)
from pipeline.quantize.smoothquant import ALPHA, TOLERANCE, find_sites, smooth

BIAS = "+bias"  # the suffix of a bias-corrected candidate's name (each Conv/Gemm's own error, ``bias.py``)
LINEAR_BIAS = "+linear-bias"  # linear layers' biases corrected in order (``linear_bias.py``)
CORRECTIONS = {BIAS: correct_bias, LINEAR_BIAS: correct_linear_biases}
SMOOTH = "+smoothquant"  # the suffix of a candidate built from the SmoothQuant-rewritten graph
PROOF_IMAGES = 8  # calibration images the SmoothQuant rewrite is proven unchanged on
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
    fp32: onnx.ModelProto | None = None  # the FP32 graph quantized (SmoothQuant's rewrite where kept)


@dataclass
class Candidates:
    """What building and checking a candidate needs: ``build(nodes, amaxes, fp32)`` runs ModelOpt (on ``fp32``, None:
    the source's graph), ``measure`` checks, ``shortfall`` says how far figures are from the budget (0: met);
    ``smoothquant``: None tries it (auto), True always, False never."""

    fp32: onnx.ModelProto
    calib_x: np.ndarray
    build: Callable[[list[str], dict[str, float] | None, onnx.ModelProto | None], onnx.ModelProto]
    measure: Callable[[bytes], dict[str, Any]]
    shortfall: Callable[[dict[str, Any]], float]
    macs: dict[str, int] | None = None
    smoothquant: bool | None = None

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
    """The INT8 model of ``method`` (auto: the best candidate), bias-corrected where asked or (auto) where it helps,
    from the SmoothQuant rewrite where asked or (where the model has LayerNorm -> MatMul) where it helps."""
    names = list(AUTO_CANDIDATES) if method.kind == AUTO else [method.name]
    histograms, seconds = None, None
    sites = find_sites(on.fp32) if on.smoothquant is not False else []
    if any(parse_method(name).from_histograms for name in names):
        started = time.perf_counter()
        histograms = collect(on.fp32, on.calib_x, channels=[site.tensor for site in sites])
        seconds = round(time.perf_counter() - started, 2)
        say(f"INT8 ranges: one calibration pass, histograms of {len(histograms)} tensors in {seconds:.1f} s")
        names = usable_methods(names, too_few_values(histograms, len(on.calib_x)), method)
    tried: list[dict[str, Any]] = []
    kept = _best_method(names, nodes, histograms, on, tried)
    if bias_correction or (bias_correction is None and method.kind == AUTO):
        kept = _with_bias(kept, bool(bias_correction), on, tried)
    if sites and histograms is not None:
        kept = _with_smoothquant(kept, sites, nodes, histograms, on, tried)
    if len(tried) > 1:
        say("INT8 methods tried: " + "; ".join(_text(row) for row in tried) + f"; kept {kept.name}")
    ranges_of = parse_method(kept.name.removesuffix(SMOOTH).removesuffix(kept.correction))

    def rebuild(excluded: list[str]) -> onnx.ModelProto:
        again = _build(ranges_of, [*nodes, *excluded], histograms, on, kept.fp32, kept.smoothed)
        return kept.corrected(again)

    return Chosen(kept.model, kept.figures, kept.name, tried, seconds, rebuild, kept.fp32)


@dataclass
class _Kept:
    """The candidate kept so far: its model, figures and name, and how to build it again."""

    model: onnx.ModelProto
    figures: dict[str, Any]
    name: str
    fp32: onnx.ModelProto  # the graph it quantizes (SmoothQuant's rewrite, or the source's)
    correction: str = ""  # the suffix of the bias correction applied (``CORRECTIONS``), "" for none
    smoothed: dict | None = None  # the SmoothQuant rewrite's own histograms of the tensors it changed
    calib_x: np.ndarray | None = None  # the images a bias correction measures on

    def corrected(self, model: onnx.ModelProto, fp32: onnx.ModelProto | None = None) -> onnx.ModelProto:
        """``model`` (quantized from ``fp32``, None: this one's graph) with this one's bias correction, if any."""
        if not self.correction:
            return model
        return CORRECTIONS[self.correction](self.fp32 if fp32 is None else fp32, model, self.calib_x)


def _best_method(names: list[str], nodes: list[str], histograms, on: Candidates, tried: list) -> _Kept:
    """Each method built and checked (a row of ``tried``); the best."""
    built = {}
    for name in names:
        started = time.perf_counter()
        model = _build(parse_method(name), nodes, histograms, on)
        built[name] = model, on.measure(model.SerializeToString())
        tried.append(_row(name, built[name][0], built[name][1], started, on.macs))
    best = max(names, key=lambda name: on.rank(built[name][1])) if len(names) > 1 else names[0]
    return _Kept(*built[best], best, on.fp32)


def _with_bias(kept: _Kept, asked: bool, on: Candidates, tried: list) -> _Kept:
    """``kept`` bias-corrected each way (``CORRECTIONS``; linear layers' only where the model has them): the best
    kept where asked, or where it does better."""
    corrected = []
    for suffix, correct in CORRECTIONS.items():
        if suffix == LINEAR_BIAS and not linear_sites(kept.model, kept.fp32):
            continue
        started = time.perf_counter()
        model = correct(kept.fp32, kept.model, on.calib_x)
        figures = on.measure(model.SerializeToString())
        tried.append(_row(kept.name + suffix, model, figures, started, on.macs))
        corrected.append(_Kept(model, figures, kept.name + suffix, kept.fp32, suffix, calib_x=on.calib_x))
    best = max(corrected, key=lambda one: on.rank(one.figures))
    return best if asked or on.rank(best.figures) > on.rank(kept.figures) else kept


def _with_smoothquant(kept: _Kept, sites, nodes: list[str], histograms, on: Candidates, tried: list) -> _Kept:
    """``kept``'s method (and bias correction) on the SmoothQuant rewrite: kept where asked, or where it does better."""
    started = time.perf_counter()
    smoothed = _smoothed(sites, histograms, on)
    if smoothed is None:
        return kept
    fp32, ranges = smoothed
    method = parse_method(kept.name.removesuffix(kept.correction))
    model = kept.corrected(_build(method, nodes, histograms, on, fp32, ranges), fp32)
    figures = on.measure(model.SerializeToString())
    tried.append({**_row(kept.name + SMOOTH, model, figures, started, on.macs), "smoothquant": ranges["record"]})
    if on.smoothquant or on.rank(figures) > on.rank(kept.figures):
        return _Kept(model, figures, kept.name + SMOOTH, fp32, kept.correction, ranges, kept.calib_x)
    return kept


def _smoothed(sites, histograms: dict[str, Histogram], on: Candidates) -> tuple[onnx.ModelProto, dict] | None:
    """The SmoothQuant rewrite of ``on.fp32`` from the pass's per-channel maxima, and the rewritten tensors' own
    histograms (one forward pass); None, said, where the rewrite moves the outputs beyond FP32 rounding."""
    maxima = {site.tensor: histograms[site.tensor].channel_amax for site in sites if site.tensor in histograms}
    rewritten, spread = smooth(on.fp32, sites, {k: v for k, v in maxima.items() if v is not None}, ALPHA)
    if not spread:
        return None
    proof = np.ascontiguousarray(on.calib_x[:PROOF_IMAGES])
    moved = relative_change(run_onnxruntime(on.fp32, proof), run_onnxruntime(rewritten, proof))
    if not moved <= TOLERANCE:  # NaN included
        say(f"INT8 SmoothQuant: the rewritten graph's outputs moved by {moved:.3g} (relative): the original is kept")
        return None
    again = collect(rewritten, on.calib_x, tensors=list(spread))
    record = {"alpha": ALPHA, "tensors": len(spread), "largest_channel_ratio": round(max(spread.values()), 2)}
    return rewritten, {"histograms": again, "record": {**record, "relative_change": float(f"{moved:.3g}")}}


def exact_names(names: list[str]) -> list[str]:
    """Node names as ModelOpt's ``nodes_to_exclude`` must get them: it reads each as a regular expression matched at
    the start of a name (``re.match``), so "p2o.Conv.1" alone would also exclude p2o.Conv.10 to p2o.Conv.19."""
    return [re.escape(name) + "$" for name in dict.fromkeys(names)]


def usable_methods(names: list[str], too_few: str | None, method: Method) -> list[str]:
    """The methods the histograms can serve: with too few values, auto keeps ``max`` alone; a named method fails."""
    if too_few is None or names == ["max"]:
        return names
    if method.kind == AUTO:
        say(f"INT8 ranges: {too_few}: max ranges only (more calibration images let auto compare methods)")
        return ["max"]
    raise EdgepipeError(too_few, fix="give more calibration images (--calib), or use --method max or entropy")


def _build(method: Method, nodes: list[str], histograms, on: Candidates, fp32=None, smoothed: dict | None = None):
    """ModelOpt's PTQ of ``fp32`` (None: the source graph) with ``method``'s ranges; ``smoothed``: the SmoothQuant
    rewrite's own histograms of the tensors it changed."""
    if not method.from_histograms:
        return on.build(nodes, None, fp32)
    amaxes = ranges_for(histograms, method)
    if smoothed is not None:
        amaxes.update(ranges_for(smoothed["histograms"], method))
    amaxes.update(fixed_ranges(on.fp32, amaxes))
    return on.build(nodes, amaxes, fp32)


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
