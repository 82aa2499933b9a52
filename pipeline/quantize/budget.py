"""INT8 accuracy budgets, and the search that keeps the most sensitive nodes in higher precision until one holds.

Three budgets, parsed once into ``Budget``:

* ``max_drop``: the most top-1 points INT8 may lose against FP32 (needs labelled images);
* ``min_agreement``: the least argmax agreement with FP32, in percent (any images: top-1 agreement
  for N x C outputs, per position for N x T x C sequences);
* ``min_cosine``: the least cosine similarity with FP32 of every output (maps, boxes); ``error_share``: the
  share of its error (1 - cosine) the check images may show (1: all of it).

Given none, ``default_budget`` picks one for the model's first output (never plain PTQ unless asked
for by ``--max-drop none``): top-1 points for labelled classes, agreement for unlabelled classes
and sequences, cosine for anything else. The default cosine budget is checked with a margin (``MAP_ERROR_SHARE``): a
mean over a few dozen check images is an estimate, and images it never saw scatter around it by about
the budget's own slack (PP-OCRv4's detector: 0.9943 on 19 check pages, 0.9892 on 32 others).

``search`` starts from the plain PTQ model. It first measures the ceiling: no Q/DQ at all, the
high-precision remainder as built (``remainder.py``); where even that misses the budget, no node set
can meet it and the error says so at once. Otherwise it ranks the quantized nodes by the damage each
does to the outputs when it alone is quantized (``sensitivity.rank_alone``, on RANKING_IMAGES check
images) per MAC that keeping it out of INT8 costs. How many ranked nodes to keep out is found
cheaply: the plain model with a prefix's Q/DQ taken off (``sensitivity.without``), checked against
the budget at 1, 2, 4, ... nodes, then halved down to the shortest prefix that meets it. Then the
model is quantized again, for real, without half that prefix, then (where it misses) the prefix, one
and a half times it, then twice as many, each passing over the nodes that would take it past the same
multiple of the prefix's MACs (a big Conv ranked next is left in INT8 for smaller nodes after it). Q/DQ placement depends on
what is excluded, so each candidate is a real PTQ graph with no orphan Q/DQ. Plain PTQ, the ranking, the prefix checks, the
ceiling and at most four re-quantizations keep a whole search within about 5x one plain PTQ.
The first candidate that meets the budget is kept; when none does, the best is kept where it meets the
budget without its margin, else the error names the best reached and nothing is written. Where little
of the work is left in INT8, the result says so.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx

from pipeline.defaults import DEFAULT_MAX_DROP, DEFAULT_MIN_AGREEMENT, DEFAULT_MIN_COSINE, MAP_ERROR_SHARE
from pipeline.errors import EdgepipeError
from pipeline.progress import info as say
from pipeline.quantize.graph import int8_share
from pipeline.quantize.sensitivity import rank_alone, without

# Candidates keep these multiples of the MACs of the shortest ranked prefix whose Q/DQ-free check meets the budget
# out of INT8, smallest first (with bias correction the check is pessimistic: taking a node's Q/DQ off loses the
# balance the correction found): each is one PTQ, so that a whole search stays within 5x one plain PTQ.
PREFIX_GROWTH = (0.5, 1, 1.5, 2)
# Below this share of the MACs in INT8 the result says that FP16 may serve as well.
LOW_INT8_SHARE = 50.0
RANKING_IMAGES = 8  # check images the ranking runs on (one run of the model per quantized node)
# Damage is ranked per MAC kept out, counting at least this share of the model's MACs for any node: taking
# a node with no MACs (an Add, a pooling) out of INT8 costs no MACs but still splits INT8 runs.
MAC_FLOOR = 0.0005


@dataclass(frozen=True)
class Budget:
    """An INT8 accuracy budget: top-1 points below FP32 and/or argmax agreement with FP32 (percent)."""

    max_drop: float | None = None
    min_agreement: float | None = None
    min_cosine: float | None = None
    error_share: float = 1.0

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
    def checked_cosine(self) -> float | None:
        """The mean cosine the check images must show: ``min_cosine`` with ``error_share`` of its error."""
        return None if self.min_cosine is None else 1.0 - (1.0 - self.min_cosine) * self.error_share

    def as_given(self) -> Budget:
        """The budget without the check's margin: what a search that reaches no margin still keeps."""
        return replace(self, error_share=1.0)

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
            short += 100.0 * max(0.0, self.checked_cosine - least_cosine(figures))
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
            margin = f" ({self.checked_cosine:.4g} on the check images)" if self.error_share != 1.0 else ""
            parts.append(f"cosine at least {self.min_cosine:g} with FP32 on every output{margin}")
        return " and ".join(parts)

    def record(self) -> dict[str, float | None]:
        record = {"max_drop": self.max_drop, "min_agreement": self.min_agreement, "min_cosine": self.min_cosine}
        return {**record, "checked_cosine": self.checked_cosine} if self.error_share != 1.0 else record


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
    return (
        Budget(min_cosine=DEFAULT_MIN_COSINE, error_share=MAP_ERROR_SHARE),
        "outputs that are neither classes nor sequences",
    )


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
    row = {"kept_nodes": list(kept), "how": how, "agreement": figures["agreement"], "cosine": figures.get("cosine")}
    if figures.get("top1") is not None:
        row.update(top1=figures["top1"], delta=figures["delta"])
    return row


@dataclass
class Outcome:
    model: onnx.ModelProto
    figures: dict[str, Any]
    kept_nodes: list[str] = field(default_factory=list)
    kept_op_types: list[str] = field(default_factory=list)


@dataclass
class Trial:
    """What the search works with: real PTQ of a node set, a candidate's figures, and what ranks the nodes.

    ``quantize(kept)``: ModelOpt PTQ with ``kept`` excluded besides the fixed exclusions; ``ceiling()``:
    the model with no Q/DQ and the remainder as built; ``measure``: figures against FP32; ``fp32`` and
    ``images`` feed the ranking; ``macs``: MACs per node; ``fixed``: nodes the user excluded.
    """

    quantize: Callable[[list[str]], onnx.ModelProto]
    ceiling: Callable[[], onnx.ModelProto]
    measure: Callable[[bytes], dict[str, Any]]
    fp32: onnx.ModelProto
    images: np.ndarray
    macs: dict[str, int] | None = None
    fixed: tuple[str, ...] = ()

    def run(self, model: onnx.ModelProto, kept: list[str], how: str, started: float) -> tuple[dict, dict]:
        """A candidate's figures, and its row for ``attempts`` (with its INT8 share of MACs and seconds)."""
        figures = self.measure(model.SerializeToString())
        row = attempt(kept, figures, how)
        row["int8_share"] = int8_share(model, self.macs)["int8_share"] if self.macs else None
        row["seconds"] = round(time.perf_counter() - started, 2)
        return figures, row


def search(budget: Budget, trial: Trial, plain: Outcome, attempts: list[dict[str, Any]]) -> Outcome:
    """The PTQ model, quantized again without the most damaging nodes, that meets ``budget``.

    First the ceiling (no Q/DQ, remainder as built): where it misses the budget, nothing can meet it.
    Then nodes ranked by damage per MAC kept out are excluded, in the prefixes ``_candidates``
    finds, each a real PTQ graph. Each step is appended to ``attempts``. Raises naming the best reached when no candidate meets the budget.
    """
    say(
        f"INT8 {figures_text(plain.figures)} misses the budget ({budget.text()}); quantizing again without the most damaging nodes"
    )
    started = time.perf_counter()
    figures, row = trial.run(trial.ceiling(), ["*"], "ceiling", started)
    attempts.append({**row, "kept_nodes": []})
    say(f"  no Q/DQ at all (the high-precision remainder alone): {figures_text(figures)}")
    if not budget.as_given().met(figures):
        raise EdgepipeError(
            f"INT8 cannot meet the budget ({budget.text()}): with no Q/DQ at all the high-precision remainder alone "
            f"gives {figures_text(figures)}; nothing was written",
            fix="use --high-precision fp32, or loosen the budget (--max-drop / --min-agreement)",
        )
    best = plain
    for kept in _candidates(budget, trial, plain.model, attempts):
        started = time.perf_counter()
        model = trial.quantize(kept)
        figures, row = trial.run(model, kept, "re-quantized", started)
        attempts.append(row)
        say(f"  without {len(kept)} node(s): {figures_text(figures)}, {row['int8_share'] or 0:.1f}% of MACs in INT8")
        if budget.shortfall(figures) < budget.shortfall(best.figures):
            best = Outcome(model, figures, kept)
        if budget.met(figures):
            if row["int8_share"] is not None and row["int8_share"] < LOW_INT8_SHARE:
                say(f"  only {row['int8_share']:.1f}% of the MACs are left in INT8: --fp16 may serve as well")
            return best
    if budget.as_given().met(best.figures):  # the margin out of reach: the best, which meets the budget as given
        say(
            f"  kept {len(best.kept_nodes)} node(s) out: {figures_text(best.figures)}, within the budget, not its margin"
        )
        return best
    shown = ", ".join(best.kept_nodes[:8]) + (" ..." if len(best.kept_nodes) > 8 else "")
    raise EdgepipeError(
        f"INT8 cannot meet the budget ({budget.text()}): the best reached was {figures_text(best.figures)} keeping "
        f"{len(best.kept_nodes)} node(s) in higher precision ({shown or 'none'}); nothing was written",
        fix="loosen the budget (--max-drop / --min-agreement), try another --method or more calibration images, or use --fp16",
    )


def _candidates(budget: Budget, trial: Trial, plain: onnx.ModelProto, attempts: list) -> list[list[str]]:
    """Node sets to exclude: ranked by damage alone per MAC kept out, the shortest prefix whose Q/DQ-free check meets
    the budget (the whole ranking where none does) and, for each of ``PREFIX_GROWTH``, that multiple of its length
    with the nodes that would take the set past that multiple of its MACs passed over."""
    started = time.perf_counter()
    scores = [
        (name, score)
        for name, score in rank_alone(trial.fp32, plain, trial.images[:RANKING_IMAGES])
        if score > 0 and name not in trial.fixed
    ]
    macs = trial.macs or {}
    floor = max(sum(macs.values()) * MAC_FLOOR, 1.0)  # a node with (nearly) no MACs is not free to keep out
    order = [
        name for name, _ in sorted(scores, key=lambda item: item[1] / max(macs.get(item[0], 0), floor), reverse=True)
    ]
    say(f"  ranked {len(order)} quantized node(s) by their damage alone in {time.perf_counter() - started:.1f} s")
    if not order:
        return []
    shortest = _shortest_prefix(budget, trial, plain, order, attempts)
    cost = {name: max(macs.get(name, 0), floor) for name in order}
    spent = sum(cost[name] for name in order[:shortest])
    candidates: dict[tuple[str, ...], None] = {}
    for growth in PREFIX_GROWTH:
        allowance, chosen = spent * growth, []
        for name in order[: min(max(int(shortest * growth), 1), len(order))]:  # one too big is passed over
            if cost[name] <= allowance * (1 + 1e-9):
                chosen.append(name)
                allowance -= cost[name]
        candidates.setdefault(tuple(chosen or order[:1]))
    return [list(chosen) for chosen in candidates]


def _shortest_prefix(budget: Budget, trial: Trial, plain: onnx.ModelProto, order: list[str], attempts: list) -> int:
    """The fewest ranked nodes whose Q/DQ taken off (no re-quantization) meets the budget: 1, 2, 4, ... then halving
    the last step; ``len(order)`` where none does."""
    passed: dict[int, bool] = {}

    def meets(size: int) -> bool:
        if size not in passed:
            started = time.perf_counter()
            figures, row = trial.run(without(plain, trial.fp32, order[:size]), order[:size], "prefix check", started)
            attempts.append(row)
            passed[size] = budget.met(figures)
        return passed[size]

    low, high = 0, 1  # low fails (0: nothing kept out), high is the next size to check
    while not meets(high):
        if high == len(order):
            return len(order)
        low, high = high, min(2 * high, len(order))
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if meets(middle) else (middle, high)
    return high
