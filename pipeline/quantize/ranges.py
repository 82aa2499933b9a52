"""Activation ranges edgepipe chooses: one calibration pass, histograms kept, every method from them.

ModelOpt's ``entropy`` is ONNX Runtime's KL calibrator with 128 bins fixed by the first batch, so
its threshold never falls below the first image's maximum (nearly ``max``). Here one pass over the
calibration images keeps, per activation tensor, its largest magnitude and a histogram of
magnitudes (``Histogram``: 8192 bins whose width doubles, merging bin pairs exactly, whenever a
larger value comes; at most SAMPLE values of a tensor per batch, sampled seeded, are counted), and
each method reads its range (amax) from that:

* ``max``: the largest magnitude seen;
* ``percentile-P``: the magnitude below which P percent of the values lie (interpolated in a bin);
* ``mse``: the amax whose symmetric INT8 rounding and clipping give the least mean squared error;
* ``trt-entropy``: TensorRT's entropy calibration: 2048 bins over [0, max], the threshold from
  bin 128 up whose 128-level quantized distribution is closest (KL divergence) to the clipped one.

``write_cache`` writes the ranges as a TensorRT calibration cache, the file ModelOpt's
``calibration_cache_path`` reads: its scales replace the ones ModelOpt calibrated.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from pipeline.errors import EdgepipeError
from pipeline.quantize.sensitivity import every_tensor_session

MODELOPT_METHODS = ("entropy", "max")  # ModelOpt's own calibrators (ONNX Runtime's KL, and max)
PERCENTILES = (99.9, 99.99, 99.999)
HISTOGRAM_METHODS = ("max", *(f"percentile-{p:g}" for p in PERCENTILES), "mse", "trt-entropy")
AUTO = "auto"
# What the default tries, from the one pass: each costs a PTQ build and a check, no calibration.
AUTO_CANDIDATES = ("max", "percentile-99.99", "mse", "trt-entropy")
METHOD_NAMES = (AUTO, "entropy", *HISTOGRAM_METHODS)
FINE_BINS = 8192  # the kept histogram; methods read it rebinned to ENTROPY_BINS over [0, max]
ENTROPY_BINS = 2048
START_BIN = 128  # the first threshold TensorRT's entropy (and MSE) search tries, in ENTROPY_BINS
LEVELS = 128  # INT8 magnitudes 0..127
MIN_VALUES = ENTROPY_BINS  # fewer values than bins: no histogram worth the name (the tensor takes max)
_CHUNK = 8  # images per ONNX Runtime call (every activation of the chunk is held at once)
# Values of a tensor per call that its histogram counts (seeded sample; the max counts every value):
# a recognizer's activations run to 46 M values per image, and the tails of 99.999% still hold
# tens of samples over a few hundred images.
SAMPLE = 1 << 16
_MODELOPT_ADDS = {"BatchNormalization", "ConvTranspose", "LayerNormalization", "LRN", "HardSwish"}
_MODELOPT_REMOVES = {
    *("ArgMax", "Concat", "EmbedLayerNormalization", "Gather", "GatherElements", "GatherND", "InstanceNormalization"),
    *("LeakyRelu", "Pad", "Relu", "Reshape", "Slice", "Sigmoid", "Softmax", "Split", "Squeeze", "Transpose"),
    *("Unsqueeze", "Where"),
}
_FIX = f"use one of {', '.join(METHOD_NAMES)}, or percentile-P with P in (0, 100]"


@dataclass(frozen=True)
class Method:
    """A calibration method as --method names it: ``modelopt`` ones run ModelOpt's calibrator."""

    name: str
    kind: str  # "auto", "modelopt", "max", "percentile", "mse", "trt-entropy"
    percentile: float | None = None

    @property
    def from_histograms(self) -> bool:
        return self.kind not in ("auto", "modelopt")


def parse_method(text: str) -> Method:
    """``--method`` as given: auto, entropy (ModelOpt's), max, percentile-P (0 < P <= 100), mse, trt-entropy."""
    name = str(text).strip().lower()
    if name == AUTO:
        return Method(name, AUTO)
    if name == "entropy":
        return Method(name, "modelopt")
    if name in ("max", "mse", "trt-entropy"):
        return Method(name, name)
    if name.startswith("percentile-"):
        try:
            value = float(name.split("-", 1)[1])
        except ValueError:
            value = math.nan
        if not 0 < value <= 100:
            raise EdgepipeError(
                f"--method {text}: a percentile must be above 0 and at most 100",
                fix="pass e.g. --method percentile-99.99",
            )
        return Method(f"percentile-{value:g}", "percentile", value)
    raise EdgepipeError(f"unknown calibration method {text!r}", fix=_FIX)


class Histogram:
    """Magnitudes of one tensor: the largest seen and FINE_BINS bins of equal width from 0 (width doubles to fit)."""

    def __init__(self) -> None:
        self.counts: np.ndarray | None = None
        self.width = 0.0
        self.amax = 0.0
        self.zeros = 0  # values seen while every value so far was 0 (before a width could be set)
        self.sampler = np.random.default_rng(0)
        self.channel_amax: np.ndarray | None = None  # per last-axis channel, where ``collect`` is asked for it

    @property
    def total(self) -> int:
        return self.zeros if self.counts is None else int(round(self.counts.sum()))

    def add(self, values: np.ndarray, channels: bool = False) -> None:
        """Count ``values``: the max from all of them (``channels``: also per last-axis channel), the histogram from
        a seeded sample of at most SAMPLE."""
        if channels and np.ndim(values) >= 1 and np.size(values):
            top = np.abs(np.asarray(values, dtype=np.float32)).reshape(-1, np.shape(values)[-1]).max(axis=0)
            self.channel_amax = top if self.channel_amax is None else np.maximum(self.channel_amax, top)
        flat = np.asarray(values, dtype=np.float32).ravel()
        if flat.size == 0:
            return
        top = max(float(flat.max()), -float(flat.min()))
        self.amax = max(self.amax, top)
        weight = 1.0
        if flat.size > SAMPLE:  # each sampled value stands for size / SAMPLE of them
            weight, flat = flat.size / SAMPLE, flat[self.sampler.integers(0, flat.size, SAMPLE)]
        magnitudes = np.abs(flat)
        if self.counts is None:
            if top == 0.0:
                self.zeros += round(magnitudes.size * weight)
                return
            self.counts = np.zeros(FINE_BINS, dtype=np.float64)
            self.counts[0] = self.zeros
            self.width = top / FINE_BINS
        while top > self.width * FINE_BINS:  # merge bin pairs: the same counts at twice the width
            merged = self.counts.reshape(-1, 2).sum(axis=1)
            self.counts = np.concatenate([merged, np.zeros(FINE_BINS - merged.size)])
            self.width *= 2
        index = np.minimum((magnitudes * np.float32(1.0 / self.width)).astype(np.int32), FINE_BINS - 1)
        self.counts += np.bincount(index, minlength=FINE_BINS) * weight

    def rebinned(self, bins: int = ENTROPY_BINS) -> np.ndarray:
        """The counts in ``bins`` equal bins over [0, amax] (counts spread evenly within a fine bin)."""
        cumulative = np.concatenate([[0.0], np.cumsum(self.counts)])
        edges = np.arange(FINE_BINS + 1) * self.width
        at = np.interp(np.linspace(0.0, self.amax, bins + 1), edges, cumulative)
        at[-1] = cumulative[-1]  # the bin holding the max itself ends at the max
        return np.diff(at)


def amax_of(histogram: Histogram, method: Method) -> float:
    """The range ``method`` reads from ``histogram`` (0 for a tensor that was always 0; the largest magnitude for a
    tensor with fewer values than a histogram has bins, such as a pooled SE vector)."""
    if histogram.counts is None or histogram.amax == 0.0 or method.kind == "max" or histogram.total < MIN_VALUES:
        return histogram.amax
    if method.kind == "percentile":
        return percentile_amax(histogram.counts, histogram.width, method.percentile, histogram.amax)
    counts, width = histogram.rebinned(), histogram.amax / ENTROPY_BINS
    if method.kind == "mse":
        return mse_amax(counts, width)
    return entropy_amax(counts, width)


def percentile_amax(counts: np.ndarray, width: float, percentile: float, amax: float) -> float:
    """The magnitude below which ``percentile`` % of the counted values lie, linear within its bin."""
    cdf = np.cumsum(counts) / counts.sum()
    wanted = percentile / 100.0
    index = min(int(np.searchsorted(cdf, wanted - 1e-12)), len(counts) - 1)
    below = cdf[index - 1] if index else 0.0
    share = cdf[index] - below
    fraction = (wanted - below) / share if share > 0 else 1.0
    return float(min((index + min(max(fraction, 0.0), 1.0)) * width, amax))


def mse_amax(counts: np.ndarray, width: float, start: int = START_BIN) -> float:
    """The bin centre, from ``start`` on, that as amax gives the least squared INT8 error over the histogram."""
    centres = (np.arange(len(counts)) + 0.5) * width
    best, best_error = centres[-1], math.inf
    for first in range(start, len(counts), 256):  # candidates in blocks: (block x bins) at a time
        amax = centres[first : first + 256, None]
        scale = amax / (LEVELS - 1)
        rounded = np.minimum(np.round(centres[None, :] / scale), LEVELS - 1) * scale
        errors = ((rounded - centres[None, :]) ** 2 * counts[None, :]).sum(axis=1)
        at = int(np.argmin(errors))
        if errors[at] < best_error:
            best, best_error = float(amax[at, 0]), float(errors[at])
    return best


def entropy_amax(counts: np.ndarray, width: float, start: int = START_BIN, levels: int = LEVELS) -> float:
    """TensorRT's entropy calibration on ``counts`` (bins of ``width`` from 0), as NVIDIA's reference computes it.

    For each threshold bin i from ``start``: P is the histogram below i with everything above
    folded into bin i - 1; Q spreads each of ``levels`` groups of those bins evenly over the
    group's non-empty bins. The amax is the edge of the last i with the least KL(P || Q). Bin 0
    takes bin 1's count first (ReLU outputs pile up at 0), as the reference does.
    """
    bins = np.asarray(counts, dtype=np.float64).copy()
    bins[0] = bins[1]
    n, total = len(bins), bins.sum()
    if total == 0 or n < start:
        return n * width
    cumulative = np.concatenate([[0.0], np.cumsum(bins)])
    nonzero = np.concatenate([[0], np.cumsum(bins > 0)])
    p = bins / total
    plogp = np.concatenate([[0.0], np.cumsum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0))])
    ends = np.arange(start, n + 1)  # i: bins [0, i) kept
    starts = (np.arange(levels + 1)[None, :] * ends[:, None] + levels - 1) // levels  # group g is [s_g, s_g+1)
    group_sum = cumulative[starts[:, 1:]] - cumulative[starts[:, :-1]]
    group_nonzero = nonzero[starts[:, 1:]] - nonzero[starts[:, :-1]]
    kept = cumulative[ends]
    with np.errstate(divide="ignore", invalid="ignore"):
        q_group = np.where(group_sum > 0, group_sum / np.maximum(group_nonzero, 1) / kept[:, None], 1.0)
        last_bin = bins[ends - 1]
        inside = group_sum.copy()
        inside[:, -1] -= last_bin  # the last bin's P also holds the outliers: counted on its own below
        cross = (inside / total * np.log(q_group)).sum(axis=1)
        p_last = (last_bin + (total - kept)) / total
        q_last = q_group[:, -1]
        last = np.where(last_bin > 0, p_last * (np.log(p_last) - np.log(q_last)), np.where(p_last > 0, np.inf, 0.0))
        divergence = plogp[ends - 1] - cross + last
    best = len(ends) - 1 - int(np.argmin(divergence[::-1]))  # the last of equal minima
    return float(ends[best] * width)


def collect(
    model: onnx.ModelProto, images: np.ndarray, tensors: list[str] | None = None, channels: Iterable[str] = ()
) -> dict[str, Histogram]:
    """One pass of ``model`` over ``images``: a ``Histogram`` of every float activation (or of ``tensors``); those
    named in ``channels`` also keep their largest magnitude per last-axis channel (SmoothQuant's maxima).

    ``too_few_values`` says when the images give fewer values per tensor than a histogram has bins.
    """
    exposed, names = expose(model, tensors)
    session = every_tensor_session(exposed)
    feed = session.get_inputs()[0]
    fixed = isinstance(feed.shape[0], int) and feed.shape[0] > 0
    batch = feed.shape[0] if fixed else _CHUNK
    histograms = {name: Histogram() for name in names}
    fetched = [name for name in names if name != feed.name]
    per_channel = set(channels)
    for start in range(0, len(images), batch):
        chunk = np.ascontiguousarray(images[start : start + batch])
        if fixed and len(chunk) < batch:
            chunk = np.resize(chunk, (batch, *chunk.shape[1:]))
        values = dict(zip(fetched, session.run(fetched, {feed.name: chunk})), **{feed.name: chunk})
        for name in names:
            histograms[name].add(values[name][: len(images) - start], name in per_channel)
    return {name: h for name, h in histograms.items() if h.total}


def too_few_values(histograms: dict[str, Histogram], images: int) -> str | None:
    """Why the histograms cannot tell percentile, MSE or entropy ranges apart (None: they can)."""
    median = int(np.median([h.total for h in histograms.values()])) if histograms else 0
    if median >= MIN_VALUES:
        return None
    return (
        f"the {images} calibration images give most activation tensors fewer values ({median}) than the "
        f"{MIN_VALUES} bins of a histogram"
    )


def expose(model: onnx.ModelProto, tensors: list[str] | None) -> tuple[onnx.ModelProto, list[str]]:
    """``model`` with ``tensors`` (default: every float tensor a node reads, not a weight) as outputs; the float ones."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.output, *graph.input]}
    constants = {i.name for i in graph.initializer} | {
        o for n in graph.node if n.op_type == "Constant" for o in n.output
    }
    quantizable = quantizable_op_types()
    read = [i for n in graph.node if n.op_type in quantizable for i in n.input if i and i not in constants]
    wanted = tensors if tensors is not None else list(dict.fromkeys(read))
    names = [name for name in wanted if types.get(name) in floats]
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {o.name for o in exposed.graph.output} | {i.name for i in exposed.graph.input}
    for name in names:
        if name not in present:
            exposed.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None))
    return exposed, names


def quantizable_op_types() -> set[str]:
    """The op types whose inputs ModelOpt's INT8 may quantize: ONNX Runtime's QDQ and QLinear registries, with
    ModelOpt's additions and without the copy, reduction and activation ops it removes (modelopt ``configure_ort``)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry  # loaded by INT8 calibration only

    return (set(QDQRegistry) | set(QLinearOpsRegistry) | _MODELOPT_ADDS) - _MODELOPT_REMOVES


def constants_as_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its Constant nodes' tensors as initializers: ModelOpt's calibration cache takes every
    quantized tensor it has no scale for to be a weight initializer (exporters such as Paddle's give weights
    as Constant nodes)."""
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    constants = [n for n in folded.graph.node if n.op_type == "Constant" and _tensor_of(n) is not None]
    for node in constants:
        tensor = _tensor_of(node)
        tensor.name = node.output[0]
        folded.graph.initializer.append(tensor)
        folded.graph.node.remove(node)
    return folded


def _tensor_of(node: onnx.NodeProto) -> onnx.TensorProto | None:
    value = next((a for a in node.attribute if a.name == "value"), None)
    return None if value is None else onnx.TensorProto.FromString(value.t.SerializeToString())


def write_cache(path: Path, amaxes: dict[str, float]) -> Path:
    """The ranges as a TensorRT calibration cache (scale = amax / 127, big-endian float hex) for ModelOpt."""
    lines = ["TRT-8501-EntropyCalibration2"]
    for name, amax in amaxes.items():
        scale = amax / (LEVELS - 1) if amax > 0 else 1.0  # an all-zero tensor: ONNX Runtime's scale for it
        lines.append(f"{name}: {struct.pack('!f', scale).hex()}")
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def ranges_for(histograms: dict[str, Histogram], method: Method) -> dict[str, float]:
    """Every tensor's amax by ``method``."""
    return {name: amax_of(histogram, method) for name, histogram in histograms.items() if ": " not in name}
