"""`edgepipe run`: every stage end to end into one run directory, redoing only what changed.

The run is a table of stages (train or the given checkpoint -> export -> calibrate -> quantize ->
build engines -> validate -> bench), then the report. A row names what the stage makes, the
inputs it is made from (sha256 by role, as the output's manifest records them), the settings
that matter, and how to make it. The one reuse rule is the output's own manifest
(``artifacts.why_stale``): a stage whose output was made from the same inputs and settings, and
is intact, is reused; otherwise it is made again, and so is everything made from it. ``force``
redoes every stage. validate and bench write their results as JSON with a manifest of kind
``result``, reused the same way.

A run may start from any single-image-input ONNX, with the user's images (``--data``, ``--labels``)
and preprocessing flags: the first stage ("import") stores the preprocessing in a copy of the model,
so that every FP16/INT8 model made from it carries it too and later stages need no flags; the
calibration set is drawn from the calibration pool of the user's data, and validate judges on the
held-out part. The primary input (checkpoint or ONNX, the data's listing, labels and preprocessing)
is checked before the run directory is made. A failed
stage is recorded in the report with its reason and the stages that need it are skipped; the
rest goes on, unless ``strict``. Every file is written atomically, so a run stopped by Ctrl-C
leaves nothing half-written and the next run resumes where it stopped.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import calibration
from pipeline import bench, benchreport, build, export, quantize, report, train, validate
from pipeline.artifacts import Kind, read_manifest, sha256_file, why_stale, write_json_atomic, write_manifest
from pipeline.checkpoint import config_of, model_info, model_record, save_checkpoint
from pipeline.data import DEFAULT_DATA, load_dataset, load_for_config, resolve_source
from pipeline.defaults import BUDGET_DEFAULT, DEFAULT_MAX_DROP
from pipeline.errors import EdgepipeError
from pipeline.images import PreprocessFlags
from pipeline.modelspec import ModelCode, ModelSpec
from pipeline.onnxfile import load_onnx, onnx_config
from pipeline.precision import Precision, parse_list
from pipeline.progress import info, info_styled
from pipeline.runsource import Source, open_source
from pipeline.tensorrt.backend import get_backend, installed_backends

PRECISIONS = tuple(Precision)
DEFAULT_BENCH_BATCHES = (1, 8)
BENCH_WARMUP_MS = 100
# INT8 accuracy budget (points of top-1 below the FP32 model): the most sensitive nodes stay in
# higher precision until INT8 is within it. Plain PTQ misses it on some models by a couple of images.
NO_BACKEND = "no TensorRT flavour is installed (pip install 'edgepipe[rtx]', or JetPack's TensorRT on Jetson)"


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
            info_styled(f"{stage.name}: skipped, {reason}", "yellow")
            self.record[stage.name] = {"status": "skipped", "seconds": 0.0, "reason": reason}
            return
        try:
            inputs = stage.inputs()
            stale = "is asked for by --force, which redoes every stage" if self.force else _why_stale(stage, inputs)
            if stale is None:
                info_styled(f"{stage.name}: unchanged, reused", "dim")
                self.record[stage.name] = {"status": "reused", "seconds": 0.0}
                return
            info_styled(f"{stage.name} ...", "bold")
            if stage.output.exists():
                info(f"  {stage.output.name} is redone: it {stale}")
            result = stage.make()
            if stage.kind is Kind.RESULT:
                write_json_atomic(stage.output, result)
                write_manifest(stage.output, Kind.RESULT, inputs=inputs, params=stage.settings)
        except EdgepipeError as exc:
            if self.strict:
                raise
            info_styled(f"{stage.name} failed: {exc}", "red")
            self.record[stage.name] = {
                "status": "failed",
                "seconds": round(time.perf_counter() - started, 2),
                "reason": str(exc),
            }
            return
        self.record[stage.name] = {"status": "done", "seconds": round(time.perf_counter() - started, 2)}

    def result(self, stage: str, path: Path) -> dict[str, Any] | None:
        """A validate or bench result, when that stage finished."""
        return json.loads(path.read_text()) if self.ok(stage) else None


def _why_stale(stage: Stage, inputs: dict[str, str]) -> str | None:
    recorded = (read_manifest(stage.output) or {}).get("params", {})
    # What a stage works out for itself (nodes kept in FP32, training figures) is not a setting of
    # the run; it is compared as recorded, while every setting the run passes must match.
    return why_stale(stage.output, stage.kind, inputs, {**recorded, **stage.settings})


def run(
    model: str | ModelSpec | None = None,
    checkpoint: str | Path | None = None,
    onnx_model: str | Path | None = None,
    data: str | None = None,
    precisions: tuple[str | Precision, ...] | str = PRECISIONS,
    output: str | Path | None = None,
    strict: bool = False,
    force: bool = False,
    epochs: int | None = None,
    seed: int = 0,
    engines: bool = True,
    bench_batches: tuple[int, ...] = DEFAULT_BENCH_BATCHES,
    bench_seconds: float = 1.0,
    max_drop: float | None | str = BUDGET_DEFAULT,
    labels: str | Path | None = None,
    preprocess: PreprocessFlags | None = None,
    workers: int | None = None,
    weights: str | Path | None = None,
    input_shape: tuple[int, int, int] | None = None,
    code: ModelCode | None = None,
) -> dict[str, Any]:
    """Run the pipeline into ``output``; returns the report (also written as report.json/.md).

    ``labels``, ``preprocess`` and ``workers`` are for an ``onnx_model`` edgepipe did not export.
    ``model`` is any --model spec; ``weights`` start it (with ``epochs`` None: taken as they are,
    no training), ``input_shape`` is its (C, H, W); ``code`` is the user code a given checkpoint may
    be rebuilt from (by default: ``model``'s).
    """
    started = time.perf_counter()
    wanted = parse_list(precisions)
    source = open_source(model, checkpoint, onnx_model, data, labels, preprocess, code, weights)
    foreign = source.model_input is not None
    max_drop = _budget(source, max_drop)
    data_name = resolve_source(data) if data else (source.data or DEFAULT_DATA)
    folder = Path(output or f"runs/{source.folder_name}")
    if folder.exists() and not folder.is_dir():
        raise EdgepipeError(f"run directory {folder} is a file", fix="pass another -o DIR")
    folder.mkdir(parents=True, exist_ok=True)

    trained = source.start == "training"
    ckpt = folder / "checkpoint.pt" if trained else source.file if source.start == "checkpoint" else None
    onnx_fp32 = source.file if source.start == "onnx" and not foreign else folder / "model.onnx"
    if foreign and onnx_fp32.exists() and onnx_fp32.resolve() == source.file.resolve():
        raise EdgepipeError(
            f"--onnx {source.file} is where this run writes its copy of the model", fix="pass another -o DIR"
        )  # before any write
    calib = folder / "calib.npz"
    onnx = {
        Precision.FP32: onnx_fp32,
        Precision.FP16: folder / "model.fp16.onnx",
        Precision.INT8: folder / "model.int8.onnx",
    }
    first = "import" if foreign else None if source.start == "onnx" else "export"  # the stage that makes the FP32 ONNX
    makers = {Precision.FP32: first, Precision.FP16: "quantize-fp16", Precision.INT8: "quantize-int8"}
    validation, benched = folder / "validate.json", folder / "bench.json"
    to_onnx = (first,) if first else ()
    size = source.model_input.fixed_size if foreign else None
    backend, engines_note = _backend(engines)
    if trained and epochs is None:  # given weights are taken as they are; else the model's recipe
        epochs = 0 if weights else model_info(source.name).get("default_epochs", train.DEFAULT_EPOCHS)
    stages = Stages(force, strict)
    # FP16/INT8 of a foreign model are checked on the held-out part of a folder of images (an .npz here holds pixels, not model inputs)
    checked_on = (
        {"data": data, "labels": labels, "workers": workers}
        if foreign and data and Path(data).is_dir()
        else {"data": None if foreign else data}
    )
    datasets: dict[str, str] = {}

    def data_sha(config: dict[str, Any] | None = None) -> str:
        if foreign:  # the user's images: their identity, without decoding them
            return source.need_images().sha256
        key = json.dumps(config and [config["input_shape"], config.get("preprocess")])
        if key not in datasets:  # loaded once per input shape, for every stage that names it
            datasets[key] = (load_for_config(config, data) if config else load_dataset(data or DEFAULT_DATA)).sha256
        return datasets[key]

    @functools.cache  # called only once export has finished; the FP32 ONNX does not change after
    def fp32_config() -> dict[str, Any] | None:
        return None if foreign else onnx_config(load_onnx(onnx_fp32), onnx_fp32)

    def draw_calibration() -> Path:
        drawn = (
            calibration.draw_from_images(
                onnx_fp32, source.need_images().spec, seed=seed, labels=labels, workers=workers
            )
            if foreign
            else calibration.draw(fp32_config(), data=data, seed=seed)
        )
        return calibration.save(calib, drawn, force=True)

    def calibration_inputs() -> dict[str, str]:
        made_from = (
            {"onnx": sha256_file(onnx_fp32)} if foreign else {"checkpoint": fp32_config().get("checkpoint_sha256")}
        )
        return {"data": data_sha(fp32_config()), **made_from}

    def validated() -> dict[str, Any]:
        files = [str(p) for p in made().values()]
        if foreign:  # the held-out part of the user's images, never calibrated on
            return validate.validate(
                onnx_fp32, files, data=source.need_images().spec, labels=labels, workers=workers, split="held-out"
            )
        return validate.validate(ckpt or onnx_fp32, files, data=data, code=source.code)

    def made() -> dict[str, Path]:
        """Artifact ids (the report's rows) -> files, for what this run has made."""
        ids = {f"onnx-{p}": onnx[p] for p in PRECISIONS if p in wanted and stages.ok(makers[p])}
        ids.update(
            {f"engine-{p}": folder / f"model.{p}.engine" for p in PRECISIONS if p in wanted and stages.ok(f"build-{p}")}
        )
        return ids

    def measured_inputs() -> dict[str, str]:
        if not made():
            raise EdgepipeError("no artifact was made to measure", fix="see the stages that failed above")
        return {"reference": sha256_file(ckpt or onnx_fp32), **{i: sha256_file(p) for i, p in made().items()}}

    table = [
        Stage(
            "import",
            onnx_fp32,
            Kind.ONNX,
            lambda: {"onnx": sha256_file(source.file)},
            {"precision": "fp32", "preprocess": source.model_input.preprocess.to_dict() if foreign else None},
            lambda: source.model_input.write_onnx(source.file, onnx_fp32),
            when=foreign,
        ),
        Stage(
            "train",
            folder / "checkpoint.pt",
            Kind.CHECKPOINT,
            lambda: {
                "data": data_sha(_recorded_config(ckpt)),
                **({"weights": sha256_file(weights)} if weights else {}),
            },
            {
                "model": source.name,
                "model_spec": source.spec and source.spec.to_json(),
                "input_size": list(input_shape) if input_shape else None,
                "epochs": epochs,
                "seed": seed,
            },
            lambda: _train(source.spec, data, epochs, seed, weights, input_shape, folder / "checkpoint.pt"),
            when=trained,
        ),
        Stage(
            "export",
            onnx_fp32,
            Kind.ONNX,
            lambda: {"checkpoint": sha256_file(ckpt)},
            {"opset": export.DEFAULT_OPSET, "batch": None, "precision": "fp32"},
            lambda: export.export(
                ckpt,
                onnx_fp32,
                dynamic_batch=True,
                data=data,
                force=True,
                model_name=source.code.given,
                trust_model_code=source.code.trust,
            ),
            needs=("train",) if trained else (),
            when=first == "export",
        ),
        Stage(
            "calibrate",
            calib,
            Kind.CALIBRATION,
            calibration_inputs,
            {"num": calibration.DEFAULT_NUM, "seed": seed, "split": "pool" if foreign else "train"},
            draw_calibration,
            needs=to_onnx,
            when=Precision.INT8 in wanted,
        ),
        Stage(
            "quantize-int8",
            onnx[Precision.INT8],
            Kind.ONNX,
            lambda: {"onnx": sha256_file(onnx_fp32), "calibration": read_manifest(calib)["content_sha256"]},
            {"precision": "int8", "max_drop": max_drop},
            lambda: quantize.to_int8(
                onnx_fp32, onnx[Precision.INT8], calib=calib, max_drop=max_drop, force=True, size=size, **checked_on
            ),
            needs=("calibrate",),
            when=Precision.INT8 in wanted,
        ),
        Stage(
            "quantize-fp16",
            onnx[Precision.FP16],
            Kind.ONNX,
            lambda: {"onnx": sha256_file(onnx_fp32)},
            {"precision": "fp16"},
            lambda: quantize.to_fp16(onnx_fp32, onnx[Precision.FP16], force=True, size=size, **checked_on),
            needs=to_onnx,
            when=Precision.FP16 in wanted,
        ),
        *[
            Stage(
                f"build-{p}",
                folder / f"model.{p}.engine",
                Kind.ENGINE,
                lambda p=p: {"onnx": sha256_file(onnx[p])},
                {"backend": backend.name, "backend_version": backend.version} if backend else {},
                lambda p=p: build.build_engine(
                    onnx[p],
                    save_engine=folder / f"model.{p}.engine",
                    force=True,
                    shapes=source.model_input and source.model_input.profile_shapes(),
                ),
                needs=tuple(filter(None, [makers[p]])),
                when=backend is not None and p in wanted,
            )
            for p in PRECISIONS
        ],
        Stage(
            "validate",
            validation,
            Kind.RESULT,
            lambda: {**measured_inputs(), "data": data_sha(fp32_config())},
            {},
            validated,
            needs=to_onnx,
        ),
        Stage(
            "bench",
            benched,
            Kind.RESULT,
            measured_inputs,
            {"batches": list(bench_batches), "seconds": bench_seconds, "warmup_ms": BENCH_WARMUP_MS},
            lambda: bench.bench(
                [str(p) for p in made().values()],
                checkpoint=ckpt,
                batches=tuple(bench_batches),
                duration_s=bench_seconds,
                warmup_ms=BENCH_WARMUP_MS,
                input_size=size,
                code=source.code,
            ),
            needs=to_onnx,
        ),
    ]
    if engines and backend is None:
        info_styled(f"engines skipped: {engines_note}", "yellow")
    for stage in table:
        if stage.when:
            stages.run(stage)
    return _report(folder, source, data_name, stages, ckpt, made(), engines_note, started)


def _budget(source: Source, max_drop: float | None | str) -> float | None:
    """The INT8 budget in top-1 points: --max-drop needs labelled images; given none, unlabelled images get plain PTQ."""
    unlabelled = source.images is not None and not (
        source.images.labelled and source.model_input.num_classes is not None
    )
    if unlabelled and max_drop not in (None, BUDGET_DEFAULT):
        raise EdgepipeError(
            f"--max-drop needs labelled images, but {source.images.spec} has no labels for the model's classes ({source.images.kind})",
            fix="give class sub-folders (with --labels FILE in the model's order), or pass --max-drop none for plain PTQ",
        )
    if unlabelled and max_drop == BUDGET_DEFAULT:
        info(
            f"INT8 without an accuracy budget: {source.images.spec} has no labels for the model's classes, and --max-drop counts top-1 points"
        )
    return (None if unlabelled else DEFAULT_MAX_DROP) if max_drop == BUDGET_DEFAULT else max_drop


def _backend(engines: bool) -> tuple[Any, str | None]:
    """The TensorRT flavour engines are built with, or None and why engines are skipped."""
    if not engines:
        return None, "not requested (--no-engines)"
    if not installed_backends():
        return None, NO_BACKEND
    try:
        return get_backend("auto"), None
    except EdgepipeError as exc:  # installed but cannot be loaded: the rest of the run still goes on
        return None, str(exc)


def _train(spec: ModelSpec, data: str | None, epochs: int | None, seed: int, weights, input_shape, path: Path) -> None:
    net, config = train.train(
        spec, data=data or DEFAULT_DATA, epochs=epochs, seed=seed, weights=weights, input_shape=input_shape
    )
    # so that the checkpoint's manifest names every setting a run compares
    config["train"].update(seed=seed, input_size=list(input_shape) if input_shape else None)
    save_checkpoint(path, net, config, force=True)


def _recorded_config(checkpoint: Path | None) -> dict[str, Any] | None:
    """The config of a checkpoint an earlier run trained, so that its data is hashed as it was loaded then."""
    try:
        return config_of(checkpoint) if checkpoint is not None and checkpoint.is_file() else None
    except EdgepipeError:  # unreadable: the train stage makes it again
        return None


def _report(
    folder: Path,
    source: Source,
    data: str,
    stages: Stages,
    ckpt: Path | None,
    made: dict[str, Path],
    engines_note,
    started: float,
) -> dict[str, Any]:
    validation = stages.result("validate", folder / "validate.json")
    benched = stages.result("bench", folder / "bench.json")
    reference = ckpt or source.file or folder / "model.onnx"
    artifacts = {
        **({"pytorch": ckpt} if ckpt and stages.ok("train" if source.start == "training" else None) else {}),
        **made,
    }
    summary = report.assemble(
        folder=folder,
        model=source.name,
        data=data,
        source={
            "start": source.start,
            "file": str(reference),
            **_model_record(ckpt if ckpt and ckpt.is_file() else None),
        },
        validation=validation,
        bench=benched,
        artifacts=artifacts,
        stages=stages.record,
        engines_note=engines_note,
        seconds=time.perf_counter() - started,
    )
    if benched is not None:
        # The plot's accuracy axis comes from the validate stage rather than a second evaluation.
        accuracy = {
            Path(r["artifact"]).name: r["top1"] for r in (validation or {}).get("rows", []) if r.get("top1") is not None
        }
        if ckpt is not None and (validation or {}).get("reference", {}).get("top1") is not None:
            accuracy[ckpt.name] = validation["reference"]["top1"]
        benchreport.write_report(
            benched, folder, accuracy=accuracy, labels={path.name: name for name, path in artifacts.items()}
        )
        summary["plot"] = "bench.png"
    report.write(summary, folder)
    return summary


def _model_record(checkpoint: Path | None) -> dict[str, Any]:
    """The model spec and the weights' sha256 the report names, from the checkpoint's config."""
    if checkpoint is None:
        return {}
    try:
        record = model_record(config_of(checkpoint))
    except EdgepipeError:
        return {}
    return {
        "model_spec": record["model_spec"],
        "weights_sha256": record["weights_sha256"],
        "input_shape": record["input_shape"],
    }
