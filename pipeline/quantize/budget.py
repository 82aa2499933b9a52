"""INT8 accuracy budgets, and the search that keeps the most sensitive nodes in higher precision until one holds.

Three budgets, parsed once into ``Budget``:

* ``max_drop``: the most top-1 points INT8 may lose against FP32 (needs labelled images);
* ``min_agreement``: the least argmax agreement with FP32, in percent (any images: top-1 agreement
  for N x C outputs, per position for N x T x C sequences);
* ``min_cosine``: the least cosine similarity with FP32 of every output (maps, boxes).

Given none, ``default_budget`` picks one for the model's first output (never plain PTQ unless asked
for by ``--max-drop none``): top-1 points for labelled classes, agreement for unlabelled classes
and sequences, cosine for anything else.

``search`` starts from the plain PTQ model. It ranks the quantized nodes by the error each adds
(``sensitivity.py``) and keeps the first 1, 2, 4, 8 of them in higher precision. A model that has
collapsed (plain PTQ predicting one class nearly everywhere) may need more than a few nodes:
then whole op types are kept besides the best of those, the attention products (MatMul of two
activations, Softmax) first, then op types in the order their most sensitive node ranks, before
the ranking goes on doubling, to all of it. Every candidate is the calibrated model with Q/DQ
taken off some nodes (``graph.keep_in_high_precision``; quantizing again with those nodes excluded
mostly gives the same figures), so a step costs one check, not a calibration. The
first candidate that meets the budget is kept; when none does, the error names the best reached
and nothing is written. Where little of the work is left in INT8, the result says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from pipeline.defaults import DEFAULT_MAX_DROP, DEFAULT_MIN_AGREEMENT, DEFAULT_MIN_COSINE
from pipeline.errors import EdgepipeError
from pipeline.progress import info as say
from pipeline.quantize.graph import int8_share, keep_in_high_precision, quantized_nodes
from pipeline.quantize.sensitivity import rank_sensitive_nodes

FEW_STEPS = 4  # ranked prefixes (1, 2, 4, 8 nodes) tried before whole op types
# Below this share of the MACs in INT8 the result says that FP16 may serve as well.
LOW_INT8_SHARE = 50.0
SENSITIVITY_IMAGES = 32  # check images the ranking runs on (both models, every intermediate tensor)
ATTENTION = "attention"


@dataclass(frozen=True)
class Budget:
    """An INT8 accuracy budget: top-1 points below FP32 and/or argmax agreement with FP32 (percent)."""

    max_drop: float | None = None
    min_agreement: float | None = None
    min_cosine: float | None = None

    def __post_init__(self):
        if self.max_drop is not None and not (self.max_drop >= 0 and math.isfinite(self.max_drop)):
            raise EdgepipeError(
                f"--max-drop must be 0 or more points, got {self.max_drop}", fix="pass a budget such as --max-drop 0.5"
            )
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 100:
            raise EdgepipeError(
                f"--min-agreement must be a percentage from 0 to 100, got {self.min_agreement:g}",
                fix="pass e.g. --min-agreement 99",
            )
        if self.min_cosine is not None and not -1 <= self.min_cosine <= 1:
            raise EdgepipeError(
                f"--min-cosine must be a cosine from -1 to 1, got {self.min_cosine:g}",
                fix="pass e.g. --min-cosine 0.99",
            )

    @property
    def active(self) -> bool:
        return self.max_drop is not None or self.min_agreement is not None or self.min_cosine is not None

    def check_images(self, labelled: bool, what: str) -> None:
        """--max-drop needs labels on the images the budget is measured on."""
        if self.max_drop is not None and not labelled:
            raise EdgepipeError(
                f"--max-drop measures top-1 against labels, but {what} have none",
                fix="use --min-agreement PCT (argmax agreement with FP32, needs no labels), or give labelled images (y in the .npz)",
            )

    def shortfall(self, figures: dict[str, Any]) -> float:
        """How far ``figures`` are from the budget (0 when met): points below it, summed."""
        short = 0.0
        if self.max_drop is not None:
            short += max(0.0, -figures["delta"] - self.max_drop)
        if self.min_agreement is not None:
            short += max(0.0, self.min_agreement - figures["agreement"])
        if self.min_cosine is not None:
            short += 100.0 * max(0.0, self.min_cosine - least_cosine(figures))
        return short

    def met(self, figures: dict[str, Any]) -> bool:
        return self.shortfall(figures) == 0.0

    def text(self) -> str:
        parts = []
        if self.max_drop is not None:
            parts.append(f"at most {self.max_drop:g} top-1 points below FP32")
        if self.min_agreement is not None:
            parts.append(f"at least {self.min_agreement:g}% argmax agreement with FP32")
        if self.min_cosine is not None:
            parts.append(f"cosine at least {self.min_cosine:g} with FP32 on every output")
        return " and ".join(parts)

    def record(self) -> dict[str, float | None]:
        return {"max_drop": self.max_drop, "min_agreement": self.min_agreement, "min_cosine": self.min_cosine}


def output_kind(shape: tuple[int, ...]) -> str:
    """ "classes" (N x C), "sequence" (N x T x C, C of 8 or more) or "map" (anything else: maps, boxes)."""
    if len(shape) == 2:
        return "classes"
    return "sequence" if len(shape) == 3 and shape[-1] >= 8 else "map"


def default_budget(kind: str, labelled: bool) -> tuple[Budget, str]:
    """The budget INT8 keeps when none is given, and why: see the module's docstring."""
    if kind == "classes" and labelled:
        return Budget(max_drop=DEFAULT_MAX_DROP), "labelled classes"
    if kind in ("classes", "sequence"):
        return Budget(min_agreement=DEFAULT_MIN_AGREEMENT), f"{'unlabelled ' if kind == 'classes' else ''}{kind}"
    return Budget(min_cosine=DEFAULT_MIN_COSINE), "outputs that are neither classes nor sequences"


def least_cosine(figures: dict[str, Any]) -> float:
    """The lowest mean cosine with FP32 over the outputs (the first output's where only it is known)."""
    outputs = figures.get("outputs") or {}
    cosines = [o["cosine"] for o in outputs.values() if o.get("cosine") is not None]
    return min(cosines) if cosines else figures["cosine"]


def figures_text(figures: dict[str, Any]) -> str:
    """ "top-1 91.20% (-1.30 points), agreement 95.10%" (top-1 only where there are labels)."""
    top1 = f"top-1 {figures['top1']:.2f}% ({figures['delta']:+.2f} points), " if figures.get("top1") is not None else ""
    cosine = f", cosine {figures['cosine']:.4f}" if figures.get("cosine") is not None else ""
    return f"{top1}agreement {figures['agreement']:.2f}%{cosine}"


def attempt(kept: list[str], figures: dict[str, Any], how: str) -> dict[str, Any]:
    """One step of the search as results and manifests record it."""
    row = {"kept_nodes": list(kept), "how": how, "agreement": figures["agreement"]}
    if figures.get("top1") is not None:
        row.update(top1=figures["top1"], delta=figures["delta"])
    return row


@dataclass
class Outcome:
    model: onnx.ModelProto
    figures: dict[str, Any]
    kept_nodes: list[str] = field(default_factory=list)
    kept_op_types: list[str] = field(default_factory=list)


def search(
    budget: Budget,
    fp32: onnx.ModelProto,
    plain: onnx.ModelProto,
    figures: dict[str, Any],
    images: np.ndarray,
    measure: Callable[[bytes], dict[str, Any]],
    attempts: list[dict[str, Any]],
    fixed_nodes: list[str] = (),
    macs: dict[str, int] | None = None,
) -> Outcome:
    """The plain PTQ model with the fewest sensitive nodes in higher precision that meets ``budget``.

    ``measure`` gives a candidate's figures against FP32; ``images`` (the check images) feed the
    ranking; ``fixed_nodes`` were excluded by the user and are not ranked; ``macs`` (per node) let
    the result say when little of the work is left in INT8. Each step is appended to ``attempts``.
    Raises naming the best reached when no candidate meets the budget.
    """
    say(
        f"INT8 {figures_text(figures)} misses the budget ({budget.text()}); keeping the most sensitive nodes in higher precision"
    )
    ranking = [
        name for name, _ in rank_sensitive_nodes(fp32, plain, images[:SENSITIVITY_IMAGES]) if name not in fixed_nodes
    ]
    best = Outcome(plain, figures)
    groups = _op_type_groups(fp32, plain, ranking)
    prefixes = [ranking[:count] for count in _doublings(len(ranking))]
    best_prefix: list[str] = []

    def tries():  # (kept nodes, whole op types, how), in order; whole op types add to the best prefix so far
        yield from ((kept, [], "ranked") for kept in prefixes[:FEW_STEPS])
        for op_types, nodes in groups:
            yield best_prefix + [n for n in nodes if n not in best_prefix], op_types, "op types"
        yield from ((kept, [], "ranked") for kept in [*prefixes[FEW_STEPS:], ranking])

    tried = set()
    for kept, op_types, how in tries():
        if frozenset(kept) in tried:
            continue
        tried.add(frozenset(kept))
        candidate = keep_in_high_precision(plain, kept)
        result = measure(candidate.SerializeToString())
        attempts.append(attempt(kept, result, how))
        what = f"{len(kept)} node(s)"
        if op_types:
            what = f"whole op types {', '.join(op_types)}{f' and the {len(best_prefix)} ranked' if best_prefix else ''} ({len(kept)} nodes)"
        say(f"  keeping {what} in higher precision: {figures_text(result)}")
        if budget.shortfall(result) < budget.shortfall(best.figures):
            best = Outcome(candidate, result, kept, op_types)
            if how == "ranked":
                best_prefix = kept
        if budget.met(result):
            share = int8_share(candidate, macs)["int8_share"] if macs else None
            if share is not None and share < LOW_INT8_SHARE:
                say(f"  only {share:.1f}% of the MACs are left in INT8: --fp16 may serve as well")
            return best
    kept_text = (
        ", ".join(best.kept_op_types) + " (whole op types)"
        if best.kept_op_types
        else (", ".join(best.kept_nodes[:8]) or "none")
    )
    if len(best.kept_nodes) > 8 and not best.kept_op_types:
        kept_text += " ..."
    raise EdgepipeError(
        f"INT8 cannot meet the budget ({budget.text()}): the best reached was {figures_text(best.figures)} keeping "
        f"{len(best.kept_nodes)} node(s) in higher precision ({kept_text}); nothing was written",
        fix="loosen the budget (--max-drop / --min-agreement), try --method max or more calibration images, or use --fp16",
    )


def _doublings(count: int) -> list[int]:
    """1, 2, 4 ... below ``count`` (the whole ranking is tried last)."""
    sizes, size = [], 1
    while size < count:
        sizes.append(size)
        size *= 2
    return sizes


def _op_type_groups(
    fp32: onnx.ModelProto, plain: onnx.ModelProto, ranking: list[str]
) -> list[tuple[list[str], list[str]]]:
    """Whole op types to keep, cumulatively: the attention products first, then op types in the order their first node ranks."""
    quantized = set(quantized_nodes(plain)) & set(ranking)
    nodes = {node.name: node for node in fp32.graph.node}
    constants = {init.name for init in fp32.graph.initializer} | {
        out for node in fp32.graph.node if node.op_type == "Constant" for out in node.output
    }
    attention = [
        name
        for name in ranking
        if name in nodes
        and (
            nodes[name].op_type == "Softmax"
            or (nodes[name].op_type == "MatMul" and not any(i in constants for i in nodes[name].input))
        )
    ]
    by_type: dict[str, list[str]] = {}
    for name in ranking:
        if name in quantized and name in nodes:
            by_type.setdefault(nodes[name].op_type, []).append(name)
    order = sorted(by_type, key=lambda op: min(ranking.index(n) for n in by_type[op]))
    groups, kept_types, kept_nodes = [], [], []
    if attention:
        kept_types, kept_nodes = [ATTENTION], list(attention)
        groups.append((list(kept_types), list(kept_nodes)))
    for op_type in order:
        added = [name for name in by_type[op_type] if name not in kept_nodes]
        if not added:
            continue
        kept_types, kept_nodes = [*kept_types, op_type], kept_nodes + added
        if len(kept_nodes) < len(quantized):  # every node kept: the whole ranking, tried last
            groups.append((list(kept_types), list(kept_nodes)))
    return groups
