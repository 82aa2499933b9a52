"""Depthwise convolutions in higher precision: the first thing an INT8 model that misses its budget tries.

A depthwise Conv (one input channel per group) reads every channel alone, while TensorRT quantizes
activations per tensor: one INT8 scale, set by the widest channel, serves channels whose ranges
differ tenfold, and no sum over channels averages that rounding out as it does in a dense Conv. On
MobileNet-style backbones these few percent of the MACs carry much of the INT8 error (PP-OCRv4's
detector: map cosine 0.979 -> 0.987 with its 14 depthwise Convs, 3.8% of the MACs, fed their FP32
inputs; their weights in FP32 instead change nothing).

Their inputs are taken out of INT8 after PTQ (``graph.keep_in_high_precision``), so every other
Q/DQ stays where ModelOpt put it: handing them to ModelOpt's ``nodes_to_exclude`` instead also drops
the pointwise Convs around them (the detector kept 44.6% of its MACs in INT8 instead of 96%).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import onnx

from pipeline.progress import info as say
from pipeline.quantize.budget import Budget, Outcome, Trial, figures_text
from pipeline.quantize.graph import quantized_nodes

WHY = "depthwise Conv kept in higher precision by the accuracy budget (its input's INT8 scale is per tensor)"


def depthwise_convs(model: onnx.ModelProto) -> list[str]:
    """Names of the Convs with more than one group and one input channel per group."""
    weights = {init.name: tuple(init.dims) for init in model.graph.initializer}
    names = []
    for node in model.graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        dims = weights.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if node.name and group > 1 and dims is not None and len(dims) > 1 and dims[1] == 1:
            names.append(node.name)
    return names


def depthwise_first(
    budget: Budget,
    trial: Trial,
    keep_out: Callable[[list[str]], None],
    rebuild: Callable[[list[str]], onnx.ModelProto],
    plain: Outcome,
    attempts: list[dict],
) -> Outcome:
    """``plain`` rebuilt with its quantized depthwise Convs fed unquantized inputs, where that is closer to the
    budget; ``keep_out(names)`` tells the quantizer which nodes every later build leaves out of INT8 that way."""
    quantized = set(quantized_nodes(plain.model))
    names = [name for name in depthwise_convs(trial.fp32) if name in quantized]
    if not names:
        return plain
    started = time.perf_counter()
    keep_out(names)
    model = rebuild([])
    figures, row = trial.run(model, names, "depthwise in higher precision", started)
    attempts.append(row)
    share = f", {row['int8_share']:.1f}% of MACs in INT8" if row["int8_share"] is not None else ""
    say(f"  {len(names)} depthwise Conv(s) in higher precision: {figures_text(figures)}{share}")
    if budget.shortfall(figures) < budget.shortfall(plain.figures):
        return Outcome(model, figures, names)
    keep_out([])
    return plain
