"""The plan of `edgepipe run`: its stages as a table, run in order by ``Stages`` with the one reuse rule
(``artifacts.why_stale``), failures recorded and what needs them skipped. The start (a model to train, a
checkpoint, an ONNX) decides only the first stage ("train"/"export", or "import")."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import calibration
from pipeline import bench, build, export, quantize, train, validate
from pipeline.artifacts import Kind, read_manifest, why_stale, write_json_atomic, write_manifest
from pipeline.checkpoint import model_info, save_checkpoint
from pipeline.defaults import BENCH_WARMUP_MS, BUDGET_DEFAULT
from pipeline.digest import sha256_file
from pipeline.errors import EdgepipeError
from pipeline.images import DATA_FIX, DIGITS, Record
from pipeline.precision import ALL as PRECISIONS
from pipeline.precision import Precision
from pipeline.progress import info
from pipeline.runsource import RunStart


@dataclass
class Stage:
    """One row: ``make`` writes ``output`` (and its manifest) from ``inputs`` with ``settings``."""

    name: str
    output: Path
    kind: Kind
    inputs: Callable[[], dict[str, str]]  # role -> sha256, worked out when the stage's turn comes
    settings: dict[str, Any]
    make: Callable[[], Any]
    needs: tuple[str, ...] = ()  # stages that must have finished first
    when: bool = True  # whether this run has the stage at all


class Stages:
    """Runs rows in order: reuses by the output's manifest, records failures, skips what needs them."""

    def __init__(self, force: bool, strict: bool):
        self.force, self.strict = force, strict
        self.record: dict[str, dict[str, Any]] = {}

    def ok(self, name: str | None) -> bool:
        return name is None or self.record.get(name, {}).get("status") in ("done", "reused")

    def run(self, stage: Stage) -> None:
        started = time.perf_counter()
        unfinished = [name for name in stage.needs if not self.ok(name)]
        if unfinished:
            reason = f"needs {', '.join(unfinished)}, which did not finish"
            info(f"{stage.name}: skipped, {reason}", "yellow")
            self.record[stage.name] = {"status": "skipped", "seconds": 0.0, "reason": reason}
            return
        try:
            inputs = stage.inputs()
            stale = "is asked for by --force, which redoes every stage" if self.force else _why_stale(stage, inputs)
            if stale is None:
                info(f"{stage.name}: unchanged, reused", "dim")
                self.record[stage.name] = {"status": "reused", "seconds": 0.0}
                return
            info(f"{stage.name} ...", "bold")
            if stage.output.exists():
                info(f"  {stage.output.name} is redone: it {stale}")
            result = stage.make()
            if stage.kind is Kind.RESULT:
                write_json_atomic(stage.output, result)
                write_manifest(stage.output, Kind.RESULT, inputs=inputs, params=stage.settings)
        except EdgepipeError as exc:
            if self.strict:
                raise
            info(f"{stage.name} failed: {exc}", "red")
            self.record[stage.name] = {"status": "failed", "reason": str(exc)}
        else:
            self.record[stage.name] = {"status": "done"}
        self.record[stage.name]["seconds"] = round(time.perf_counter() - started, 2)

    def result(self, stage: str, path: Path) -> dict[str, Any] | None:
        """A validate or bench result, when that stage finished."""
        return json.loads(path.read_text()) if self.ok(stage) else None


def _why_stale(stage: Stage, inputs: dict[str, str]) -> str | None:
    recorded = (read_manifest(stage.output) or {}).get("params", {})
    # What a stage works out for itself (nodes kept in FP32, training figures) is not a setting of
    # the run; it is compared as recorded, while every setting the run passes must match.
    return why_stale(stage.output, stage.kind, inputs, {**recorded, **stage.settings})


class Plan:
    """The files of one run and how each stage makes them; every start takes the same road after its first stage."""

    def __init__(self, start: RunStart, chosen: Any, folder: Path, data: str | None, max_drop):
        self.start, self.chosen, self.folder, self.data, self.max_drop = start, chosen, folder, data, max_drop
        self.trained = start.start == "training"
        self.ckpt = folder / "checkpoint.pt" if self.trained else start.file if start.start == "checkpoint" else None
        self.first = "import" if start.start == "onnx" else "export"  # the stage that makes the FP32 ONNX
        self.onnx = {p: folder / ("model.onnx" if p is Precision.FP32 else f"model.{p}.onnx") for p in PRECISIONS}
        self.reference = self.ckpt or self.onnx[Precision.FP32]  # what artifacts are judged against
        self.engines = {p: folder / f"model.{p}.engine" for p in PRECISIONS}
        self.makers = {Precision.FP32: self.first, Precision.FP16: "quantize-fp16", Precision.INT8: "quantize-int8"}
        self.calib = folder / "calib.npz"
        self.size = start.model_input.fixed_size if start.model_input is not None else None
        self.epochs = chosen.epochs
        if self.trained and self.epochs is None:  # given weights are taken as they are; else the model's recipe
            self.epochs = 0 if chosen.weights else model_info(start.name).get("default_epochs", train.DEFAULT_EPOCHS)
        self.stages = Stages(chosen.force, chosen.strict)
        self.reading = {"data": data, "labels": chosen.labels, "workers": chosen.workers}

    @functools.cached_property
    def data_sha(self) -> str:
        """The identity of the run's images, as the checkpoint and the calibration set record it."""
        if self.start.images is None:
            raise EdgepipeError(
                f"{self.start.name} records no data, so there are no images to calibrate or validate it on",
                fix=DATA_FIX,
            )
        return self.start.images.sha256

    def made(self) -> dict[str, Path]:
        """Artifact ids (the report's rows) -> files, for what this run has made."""
        wanted, ok = self.chosen.precisions, self.stages.ok
        ids = {f"onnx-{p}": self.onnx[p] for p in PRECISIONS if p in wanted and ok(self.makers[p])}
        return ids | {f"engine-{p}": self.engines[p] for p in PRECISIONS if p in wanted and ok(f"build-{p}")}

    def measured_inputs(self) -> dict[str, str]:
        if not self.made():
            raise EdgepipeError("no artifact was made to measure", fix="see the stages that failed above")
        return {"reference": sha256_file(self.reference), **{i: sha256_file(p) for i, p in self.made().items()}}

    @property
    def class_names(self) -> tuple[str, ...] | None:
        data = self.start.model_data
        return data.class_names if data is not None else self.start.model_input.record.class_names

    def import_onnx(self) -> Path:
        """The given ONNX with the merged preprocessing and the class names stored in it; not the data and its
        split (every later stage is given ``--data``, the calibration set records the split), so changing only
        ``--data`` leaves the import as it is."""
        model_input = self.start.model_input
        record = Record(model_input.preprocess, self.class_names, model_input.record.data)
        return model_input.write_onnx(self.start.file, self.onnx[Precision.FP32], record)

    def train(self) -> None:
        chosen, shape = self.chosen, self.chosen.input_shape
        net, config = train.train(
            self.start.spec, self.data or DIGITS, self.epochs, chosen.seed, weights=chosen.weights, input_shape=shape
        )
        # so that the checkpoint's manifest names every setting a run compares
        config["train"].update(seed=chosen.seed, input_size=list(shape) if shape else None)
        save_checkpoint(self.folder / "checkpoint.pt", net, config, force=True)

    def export(self) -> Any:
        code, fp32 = self.start.code, self.onnx[Precision.FP32]
        trust = {"model_name": code.given, "trust_model_code": code.trust}
        return export.export(self.ckpt, fp32, dynamic_batch=True, data=self.data, force=True, **trust)

    def calibrate(self) -> Path:
        drawn = calibration.draw_for(self.onnx[Precision.FP32], seed=self.chosen.seed, **self.reading)
        return calibration.save(self.calib, drawn, force=True)

    def quantize(self, precision: Precision) -> Any:
        calib = {"calib": self.calib, "max_drop": self.max_drop} if precision is Precision.INT8 else {}
        fp32, output = self.onnx[Precision.FP32], self.onnx[precision]
        return quantize.convert(precision, fp32, output, force=True, size=self.size, **calib, **self.reading)

    def validate(self) -> dict[str, Any]:
        files = [str(p) for p in self.made().values()]
        return validate.validate(self.reference, files, code=self.start.code, **self.reading)

    def bench(self) -> dict[str, Any]:
        chosen = self.chosen
        return bench.bench(
            [str(p) for p in self.made().values()],
            checkpoint=self.ckpt,
            batches=tuple(chosen.bench_batches),
            duration_s=chosen.bench_seconds,
            warmup_ms=BENCH_WARMUP_MS,
            input_size=self.size,
            code=self.start.code,
        )


def table(plan: Plan, backend) -> list[Stage]:
    """The run's stages in order; a start decides only its first ("train"/"export" or "import")."""
    return [*_first(plan), *_converting(plan), *_measuring(plan, backend)]


def _first(plan: Plan) -> list[Stage]:
    """The stages that make the FP32 ONNX: import, or train (when the run trains) and export."""
    start, chosen, fp32 = plan.start, plan.chosen, plan.onnx[Precision.FP32]
    size = list(chosen.input_shape) if chosen.input_shape else None
    train_settings = {"model": start.name, "model_spec": start.spec and start.spec.to_json(), "input_size": size}
    train_settings |= {"epochs": plan.epochs, "seed": chosen.seed}
    weights = {"weights": sha256_file(chosen.weights)} if chosen.weights else {}
    return [
        Stage(
            "import",
            fp32,
            Kind.ONNX,
            lambda: {"onnx": sha256_file(start.file)},
            start.model_input and start.model_input.import_settings(plan.class_names),
            plan.import_onnx,
            when=plan.first == "import",
        ),
        Stage(
            "train",
            plan.folder / "checkpoint.pt",
            Kind.CHECKPOINT,
            lambda: {"data": plan.data_sha, **weights},
            train_settings,
            plan.train,
            when=plan.trained,
        ),
        Stage(
            "export",
            fp32,
            Kind.ONNX,
            lambda: {"checkpoint": sha256_file(plan.ckpt)},
            {"opset": export.DEFAULT_OPSET, "batch": None, "precision": "fp32"},
            plan.export,
            needs=("train",) if plan.trained else (),
            when=plan.first == "export",
        ),
    ]


def _converting(plan: Plan) -> list[Stage]:
    """The stages that make the FP16/INT8 ONNX from the FP32 one: calibrate, quantize."""
    chosen, wanted, fp32, to_onnx = plan.chosen, plan.chosen.precisions, plan.onnx[Precision.FP32], (plan.first,)
    return [
        Stage(
            "calibrate",
            plan.calib,
            Kind.CALIBRATION,
            lambda: {"data": plan.data_sha, "model": sha256_file(fp32)},
            {"num": calibration.DEFAULT_NUM, "seed": chosen.seed, "split": "pool"},
            plan.calibrate,
            needs=to_onnx,
            when=Precision.INT8 in wanted,
        ),
        Stage(
            "quantize-int8",
            plan.onnx[Precision.INT8],
            Kind.ONNX,
            lambda: {"onnx": sha256_file(fp32), "calibration": read_manifest(plan.calib)["content_sha256"]},
            {"precision": "int8", "max_drop": None if plan.max_drop == BUDGET_DEFAULT else plan.max_drop},
            lambda: plan.quantize(Precision.INT8),
            needs=("calibrate",),
            when=Precision.INT8 in wanted,
        ),
        Stage(
            "quantize-fp16",
            plan.onnx[Precision.FP16],
            Kind.ONNX,
            lambda: {"onnx": sha256_file(fp32)},
            {"precision": "fp16"},
            lambda: plan.quantize(Precision.FP16),
            needs=to_onnx,
            when=Precision.FP16 in wanted,
        ),
    ]


def _measuring(plan: Plan, backend) -> list[Stage]:
    """The stages that build engines and measure every artifact."""
    chosen, wanted, to_onnx = plan.chosen, plan.chosen.precisions, (plan.first,)
    engine = {"backend": backend.name, "backend_version": backend.version} if backend else {}
    shapes = plan.start.model_input and plan.start.model_input.profile_shapes()
    return [
        *[
            Stage(
                f"build-{p}",
                plan.engines[p],
                Kind.ENGINE,
                lambda p=p: {"onnx": sha256_file(plan.onnx[p])},
                engine,
                lambda p=p: build.build_engine(plan.onnx[p], save_engine=plan.engines[p], force=True, shapes=shapes),
                needs=(plan.makers[p],),
                when=backend is not None and p in wanted,
            )
            for p in PRECISIONS
        ],
        Stage(
            "validate",
            plan.folder / "validate.json",
            Kind.RESULT,
            lambda: {**plan.measured_inputs(), "data": plan.data_sha},
            {},
            plan.validate,
            needs=to_onnx,
        ),
        Stage(
            "bench",
            plan.folder / "bench.json",
            Kind.RESULT,
            plan.measured_inputs,
            {"batches": list(chosen.bench_batches), "seconds": chosen.bench_seconds, "warmup_ms": BENCH_WARMUP_MS},
            plan.bench,
            needs=to_onnx,
        ),
    ]
