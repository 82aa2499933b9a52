"""Cost of the INT8 accuracy budget search against one plain PTQ of the same model (target: at most 4x).

Two models edgepipe did not export (tests/budget_models.py): the SE classifier at 3x224x224 and
the CRNN-like text recognizer with outlier LayerNorm channels (plain PTQ collapses on it). Each is
quantized from an .npz of seeded inputs (--data: calibration pool and held-out split), once plain
and once with --min-agreement; both times are the whole `quantize.to_int8` call (calibration,
checks, ranking, search steps, writing), the best of two runs in one process (ModelOpt imported).

    .venv/bin/python benchmarks/budget.py [--classifier-agreement 85,95] [--recognizer-agreement 85] [--images 160]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the models live with the tests

from budget_models import CLASSIFIER_SHAPE, export_outlier_recognizer, export_varied_classifier, images  # noqa: E402
from foreign_models import TEXT_SHAPE  # noqa: E402

from pipeline import quantize  # noqa: E402
from pipeline.errors import EdgepipeError  # noqa: E402
from pipeline.machine import host  # noqa: E402

RUNS = 2  # each figure is the best of these: other work on a shared machine only ever adds time


def measure(name: str, export, shape, count: int, agreements: list[float], folder: Path) -> list[dict]:
    """One plain PTQ, then one budget search per agreement; a row per search."""
    model = export(folder / f"{name}.onnx")
    np.savez(folder / f"{name}.npz", x=images(shape, count, seed=3))
    data = str(folder / f"{name}.npz")
    plain_s = float("inf")
    for _ in range(RUNS):
        started = time.perf_counter()
        plain = quantize.to_int8(model, folder / f"{name}.plain.int8.onnx", data=data, force=True)
        plain_s = min(plain_s, time.perf_counter() - started)
    rows = []
    for agreement in agreements:
        budget_s = float("inf")
        for _ in range(RUNS):
            started = time.perf_counter()
            try:
                budget = quantize.to_int8(
                    model, folder / f"{name}.{agreement:g}.int8.onnx", data=data, min_agreement=agreement, force=True
                )
                kept = (
                    budget["kept_op_types"]
                    and f"whole op types {', '.join(budget['kept_op_types'])}"
                    or f"{len(budget['kept_nodes'])} node(s)"
                )
                outcome = f"met: {budget['agreement']:.1f}% keeping {kept}, {budget['macs']['int8_share']:.1f}% of MACs in INT8"
                steps = str(len(budget["attempts"]) - 1)
            except EdgepipeError as exc:
                best = exc.message.split("the best reached was ")[-1].split(";")[0]
                outcome, steps = f"not met (every candidate tried): best {best}", "all"
            budget_s = min(budget_s, time.perf_counter() - started)
        rows.append(
            {
                "model": name,
                "plain_s": plain_s,
                "plain_agreement": plain["agreement"],
                "held_out": plain["samples"],
                "budget": agreement,
                "budget_s": budget_s,
                "ratio": budget_s / plain_s,
                "steps": steps,
                "outcome": outcome,
                "macs": plain["macs"]["total"],
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--classifier-agreement", default="85,95", help="budgets (percent, comma-separated) for the classifier"
    )
    parser.add_argument(
        "--recognizer-agreement", default="85", help="budgets (percent, comma-separated) for the recognizer"
    )
    parser.add_argument(
        "--images", type=int, default=160, help="inputs in each .npz (80%% calibration pool, 20%% held out)"
    )
    args = parser.parse_args()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="edgepipe-budget-") as folder:
        budgets = [
            [float(v) for v in text.split(",")] for text in (args.classifier_agreement, args.recognizer_agreement)
        ]
        rows += measure(
            "classifier-224", export_varied_classifier, CLASSIFIER_SHAPE, args.images, budgets[0], Path(folder)
        )
        rows += measure("text-recognizer", export_outlier_recognizer, TEXT_SHAPE, args.images, budgets[1], Path(folder))
    machine = host()
    print(
        f"machine: {machine['platform']}, {machine['cpus']} CPUs, {machine['memory_gb']} GB; python {platform.python_version()}; "
        f"modelopt {machine['tools'].get('nvidia-modelopt', '?')}, onnxruntime {machine['tools'].get('onnxruntime', '?')}"
    )
    print(
        "| model | MACs/image | plain PTQ | plain agreement (held-out images) | budget | with budget | cost vs plain | search steps | result |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['macs'] / 1e6:.1f} M | {r['plain_s']:.1f} s | {r['plain_agreement']:.1f}% ({r['held_out']}) | >= {r['budget']:g}% | "
            f"{r['budget_s']:.1f} s | {r['ratio']:.2f}x | {r['steps']} | {r['outcome']} |"
        )


if __name__ == "__main__":
    main()
