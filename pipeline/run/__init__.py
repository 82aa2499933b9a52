"""`edgepipe run`: every stage end to end into one run directory, redoing only what changed.

The stages and the one reuse rule are the table of ``pipeline.run.plan``. The primary input is checked
before the run directory is made; a failed stage is recorded with its reason and what needs it skipped,
the rest goes on unless ``strict``. Files are written atomically: a run stopped by Ctrl-C resumes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import benchreport, report
from pipeline.checkpoint import config_of, model_record
from pipeline.defaults import BUDGET_DEFAULT, DEFAULT_BENCH_BATCHES, DEFAULT_MAX_DROP
from pipeline.errors import EdgepipeError
from pipeline.images import DIGITS, PreprocessFlags
from pipeline.modelspec import ModelCode, ModelSpec
from pipeline.precision import Precision, parse_list
from pipeline.progress import info
from pipeline.run.plan import PRECISIONS, Plan, table
from pipeline.runsource import RunStart, open_start
from pipeline.tensorrt.backend import get_backend, installed_backends


@dataclass(frozen=True)
class RunSettings:
    """What a run makes and how: precisions, output folder, training, engines, bench, INT8 budget, images."""

    precisions: tuple[Precision, ...] | str = PRECISIONS
    output: str | Path | None = None
    strict: bool = False
    force: bool = False
    epochs: int | None = None
    seed: int = 0
    engines: bool = True
    bench_batches: tuple[int, ...] = DEFAULT_BENCH_BATCHES
    bench_seconds: float = 1.0
    # INT8 accuracy budget (top-1 points below FP32): the most sensitive nodes stay in higher precision
    # until INT8 is within it. Plain PTQ misses it on some models by a couple of images.
    max_drop: float | None | str = BUDGET_DEFAULT
    labels: str | Path | None = None
    preprocess: PreprocessFlags | None = None
    workers: int | None = None
    weights: str | Path | None = None
    input_shape: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "precisions", tuple(parse_list(self.precisions)))


def run(
    model: str | ModelSpec | None = None,
    checkpoint: str | Path | None = None,
    onnx_model: str | Path | None = None,
    data: str | None = None,
    code: ModelCode | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Run the pipeline from ``model`` (any --model spec), ``checkpoint`` or ``onnx_model``; returns the
    report (also written as report.json/.md). ``settings``: the fields of ``RunSettings``; ``code``: the
    user code a given checkpoint may be rebuilt from (by default: ``model``'s)."""
    started = time.perf_counter()
    chosen = RunSettings(**settings)
    start = open_start(model, checkpoint, onnx_model, data, chosen.labels, chosen.preprocess, code, chosen.weights)
    folder = Path(chosen.output or f"runs/{start.folder_name}")
    if folder.exists() and not folder.is_dir():
        raise EdgepipeError(f"run directory {folder} is a file", fix="pass another -o DIR")
    copy = folder / "model.onnx"
    if start.file is not None and copy.exists() and copy.resolve() == start.file.resolve():
        raise EdgepipeError(
            f"--onnx {start.file} is where this run writes its copy of the model", fix="pass another -o DIR"
        )
    max_drop = _budget(start, chosen.max_drop)
    folder.mkdir(parents=True, exist_ok=True)
    plan = Plan(start, chosen, folder, data, max_drop)
    backend, engines_note = _backend(chosen.engines)
    if chosen.engines and backend is None:
        info(f"engines skipped: {engines_note}", "yellow")
    for stage in (row for row in table(plan, backend) if row.when):
        plan.stages.run(stage)
    return _report(plan, engines_note, started)


def _budget(source: RunStart, max_drop: float | None | str) -> float | str | None:
    """The INT8 budget in top-1 points: --max-drop needs labelled images; given none, unlabelled images get the INT8
    stage's default budget for the model's outputs (agreement with FP32, or cosine)."""
    unlabelled = source.model_data is not None and not source.model_data.labelled
    if unlabelled and max_drop not in (None, BUDGET_DEFAULT):
        raise EdgepipeError(
            f"--max-drop needs labelled images, but {source.images.spec} has no labels for the model's classes ({source.images.kind})",
            fix="give class sub-folders (with --labels FILE in the model's order), or pass --max-drop none for plain PTQ",
        )
    if unlabelled and max_drop == BUDGET_DEFAULT:
        return BUDGET_DEFAULT  # the INT8 stage picks the default budget for the outputs (agreement, cosine)
    return DEFAULT_MAX_DROP if max_drop == BUDGET_DEFAULT else max_drop


def _backend(engines: bool) -> tuple[Any, str | None]:
    """The TensorRT flavour engines are built with, or None and why engines are skipped."""
    if not engines:
        return None, "not requested (--no-engines)"
    if not installed_backends():
        return None, "no TensorRT flavour is installed (pip install 'edgepipe[rtx]', or JetPack's TensorRT on Jetson)"
    try:
        return get_backend("auto"), None
    except EdgepipeError as exc:  # installed but cannot be loaded: the rest of the run still goes on
        return None, str(exc)


def _report(plan: Plan, engines_note: str | None, started: float) -> dict[str, Any]:
    folder, source, stages, ckpt, made = plan.folder, plan.start, plan.stages, plan.ckpt, plan.made()
    data = source.images.spec if source.images is not None else DIGITS
    validation = stages.result("validate", folder / "validate.json")
    benched = stages.result("bench", folder / "bench.json")
    reference = ckpt or source.file or folder / "model.onnx"
    trained = ckpt and stages.ok("train" if source.start == "training" else None)
    artifacts = {**({"pytorch": ckpt} if trained else {}), **made}
    start = {"start": source.start, "file": str(reference), **_model_record(ckpt if ckpt and ckpt.is_file() else None)}
    head = {"model": source.name, "data": data, "source": start, "engines": engines_note}
    head["seconds"] = time.perf_counter() - started
    summary = report.assemble(folder, head, validation, benched, artifacts, stages.record)
    if benched is not None:
        # The plot's accuracy axis is the validate stage's, from the report's rows, rather than a second evaluation.
        accuracy = {r["file"]: r["top1"] for r in summary["rows"] if r["top1"] is not None}
        labels = {r["file"]: r["artifact"] for r in summary["rows"]}
        benchreport.write_report(benched, folder, accuracy=accuracy, labels=labels)
        summary["plot"] = "bench.png"
    report.write(summary, folder)
    return summary


def _model_record(checkpoint: Path | None) -> dict[str, Any]:
    """The model spec and the weights' sha256 the report names, from the checkpoint's config."""
    try:
        record = model_record(config_of(checkpoint)) if checkpoint is not None else {}
    except EdgepipeError:
        record = {}
    return {key: record[key] for key in ("model_spec", "weights_sha256", "input_shape")} if record else {}
