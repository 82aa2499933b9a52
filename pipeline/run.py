"""`edgepipe run`: every stage end to end into one run directory, redoing only what changed.

Stages: train (or load) -> export -> calibrate -> quantize (fp16, int8) -> build engines ->
validate -> bench -> report. ``state.json`` in the run directory records, for each stage, a key
(the sha256 of its inputs and its parameters) and the sha256 of what it wrote. A stage whose key
and outputs still match is reused; its artifacts are written atomically, so a run stopped by
Ctrl-C resumes at the stage it was in. A failed stage is recorded with its reason and the stages
that need it are skipped; the rest goes on, unless ``strict``.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any, Callable

from pipeline import __version__
from pipeline.artifacts import sha256_file, tool_versions, write_json_atomic
from pipeline.errors import EdgepipeError
from pipeline.progress import info

STATE_FORMAT = 1
PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_BENCH_BATCHES = (1, 8)
# INT8 accuracy budget (points of top-1 below the FP32 model): the most sensitive nodes stay in
# higher precision until INT8 is within it. Plain PTQ misses it on some models by a couple of images.
DEFAULT_MAX_DROP = 0.5


class RunState:
    """The run directory's state.json: one entry per stage."""

    def __init__(self, folder: Path, force: bool):
        self.folder = folder
        self.path = folder / "state.json"
        self.stages: dict[str, Any] = {}
        if self.path.exists() and not force:
            try:
                saved = json.loads(self.path.read_text())
            except ValueError:
                saved = {}
            if saved.get("format") != STATE_FORMAT:
                raise EdgepipeError(
                    f"run directory {folder} was made by another edgepipe version ({saved.get('edgepipe', 'unknown')})",
                    fix="pass --force to redo every stage there, or choose another -o",
                )
            self.stages = saved.get("stages", {})

    def reusable(self, stage: str, key: dict[str, Any]) -> dict[str, Any] | None:
        entry = self.stages.get(stage)
        if not entry or entry.get("status") != "ok" or entry.get("key") != key:
            return None
        for name, digest in entry.get("outputs", {}).items():
            path = self.folder / name
            if not path.is_file() or sha256_file(path) != digest:
                return None
        return entry

    def record(self, stage: str, key: dict[str, Any], status: str, outputs: list[Path] = (), result: Any = None, reason: str | None = None) -> None:
        self.stages[stage] = {
            "status": status,
            "key": key,
            "outputs": {p.name: sha256_file(p) for p in outputs if p.is_file()},
            "result": result,
            "reason": reason,
        }
        write_json_atomic(self.path, {"format": STATE_FORMAT, "edgepipe": __version__, "stages": self.stages})


class Runner:
    """Runs stages against a RunState, reusing, recording failures, and timing them."""

    def __init__(self, state: RunState, strict: bool):
        self.state, self.strict = state, strict
        self.timings: dict[str, dict[str, Any]] = {}

    def stage(self, name: str, key: dict[str, Any], outputs: list[Path], make: Callable[[], Any]) -> Any:
        """Result of stage ``name``; None when it failed (recorded) or a stage it needs failed."""
        if _FAILED in key.values():
            self.state.record(name, {}, "skipped", reason="a stage it needs failed")
            self.timings[name] = {"status": "skipped", "seconds": 0.0}
            return None
        cached = self.state.reusable(name, key)
        if cached is not None:
            info(f"[dim]{name}: unchanged, reused[/dim]")
            self.timings[name] = {"status": "reused", "seconds": 0.0}
            return cached["result"]
        info(f"[bold]{name}[/bold] ...")
        started = time.perf_counter()
        try:
            result = make()
        except EdgepipeError as exc:
            if self.strict:
                raise
            info(f"[red]{name} failed:[/red] {exc}")
            self.state.record(name, key, "failed", reason=str(exc))
            self.timings[name] = {"status": "failed", "seconds": round(time.perf_counter() - started, 2), "reason": str(exc)}
            return None
        self.state.record(name, key, "ok", outputs=outputs, result=result)
        self.timings[name] = {"status": "done", "seconds": round(time.perf_counter() - started, 2)}
        return result


# Stands in a stage key for an input a failed stage did not make.
_FAILED = "<not made>"


def _sha(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else _FAILED


def run(
    model: str | None = None,
    checkpoint: str | Path | None = None,
    onnx_model: str | Path | None = None,
    data: str | None = None,
    precisions: tuple[str, ...] = PRECISIONS,
    output: str | Path | None = None,
    strict: bool = False,
    force: bool = False,
    epochs: int | None = None,
    seed: int = 0,
    engines: bool = True,
    bench_batches: tuple[int, ...] = DEFAULT_BENCH_BATCHES,
    bench_seconds: float = 1.0,
    max_drop: float | None = DEFAULT_MAX_DROP,
) -> dict[str, Any]:
    """Run the pipeline into ``output``; returns the report (also written as report.json/.md)."""
    from pipeline import train as trainmod

    sources = [s for s in (model, checkpoint, onnx_model) if s]
    if len(sources) > 1:
        raise EdgepipeError("--model, --checkpoint and --onnx are alternatives", fix="pass only one of them")
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        raise EdgepipeError(f"unknown precision {', '.join(unknown) or '(none)'}", fix="pass --precisions with some of fp32,fp16,int8")
    model = model or (None if sources else trainmod.DEFAULT_MODEL)
    folder = Path(output or f"runs/{model or Path(str(checkpoint or onnx_model)).stem}")
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    stages = Runner(RunState(folder, force), strict)
    data_key = data or "digits"

    # 1. the PyTorch model
    ckpt_path = folder / "checkpoint.pt"
    if model:
        stages.stage("train", {"model": model, "data": _data_identity(data_key), "epochs": epochs, "seed": seed, "edgepipe": __version__}, [ckpt_path],
                     lambda: _train(model, data_key, epochs, seed, ckpt_path))
        reference = ckpt_path if ckpt_path.is_file() else None
    else:
        reference = Path(checkpoint) if checkpoint else None
    # 2. ONNX
    onnx_path = folder / "model.onnx"
    if onnx_model:
        onnx_path = Path(onnx_model)
    else:
        stages.stage("export", {"checkpoint": _sha(reference) if reference else _FAILED, "data": data}, [onnx_path],
                     lambda: _export(reference, onnx_path, data))
    onnx_sha = _sha(onnx_path)

    # 3. calibration and lower precisions
    artifacts: dict[str, Path] = {"fp32": onnx_path} if onnx_sha != _FAILED else {}
    if "int8" in precisions:
        calib_path = folder / "calib.npz"
        stages.stage("calibrate", {"onnx": onnx_sha, "data": data, "seed": seed}, [calib_path],
                     lambda: _calibrate(onnx_path, calib_path, data, seed))
        int8_path = folder / "model.int8.onnx"
        stages.stage("quantize-int8", {"onnx": onnx_sha, "calib": _sha(calib_path), "max_drop": max_drop}, [int8_path],
                     lambda: _quantize(onnx_path, int8_path, "int8", data, calib_path, max_drop))
        if int8_path.is_file():
            artifacts["int8"] = int8_path
    if "fp16" in precisions:
        fp16_path = folder / "model.fp16.onnx"
        stages.stage("quantize-fp16", {"onnx": onnx_sha}, [fp16_path], lambda: _quantize(onnx_path, fp16_path, "fp16", data))
        if fp16_path.is_file():
            artifacts["fp16"] = fp16_path
    onnx_artifacts = {p: artifacts[p] for p in PRECISIONS if p in artifacts and p in precisions}

    # 4. engines, with whichever TensorRT flavour is installed
    engine_artifacts: dict[str, Path] = {}
    backend_note = "not requested (--no-engines)"
    if engines:
        backend_note = _backend_available()
        if backend_note is None:
            for precision, source in onnx_artifacts.items():
                engine_path = folder / f"model.{precision}.engine"
                stages.stage(f"build-{precision}", {"onnx": _sha(source), "backend": _backend_version()}, [engine_path],
                             lambda s=source, e=engine_path: _build(s, e))
                if engine_path.is_file():
                    engine_artifacts[precision] = engine_path
        else:
            info(f"[yellow]engines skipped:[/yellow] {backend_note}")

    # 5. validate and bench every artifact against the PyTorch reference
    all_artifacts = [*onnx_artifacts.values(), *engine_artifacts.values()]
    artifact_key = {p.name: _sha(p) for p in all_artifacts} or {"artifacts": _FAILED}
    ref_key = _sha(reference) if reference else "none"
    validation = stages.stage("validate", {"reference": ref_key, "data": data, **artifact_key}, [],
                              lambda: _validate(reference, all_artifacts, data))
    bench_outputs = [folder / "bench.json", folder / "bench.md", folder / "bench.png"]
    bench_result = stages.stage("bench", {"reference": ref_key, "batches": list(bench_batches), "seconds": bench_seconds, **artifact_key}, bench_outputs,
                                lambda: _bench(reference, all_artifacts, bench_batches, bench_seconds, folder, validation))

    from pipeline import report as reportmod

    report = reportmod.assemble(
        folder=folder,
        model=_model_name(reference, onnx_path),
        data=_data_identity(data_key),
        validation=validation,
        bench=bench_result,
        artifacts={**({"pytorch": reference} if reference else {}), **{f"onnx-{p}": a for p, a in onnx_artifacts.items()}, **{f"engine-{p}": e for p, e in engine_artifacts.items()}},
        stages=stages.timings,
        engines_note=backend_note,
        seconds=time.perf_counter() - started,
    )
    if (folder / "bench.png").is_file():
        report["plot"] = "bench.png"
    reportmod.write(report, folder)
    return report


def _data_identity(data: str) -> str:
    from pipeline.data import resolve_source

    return resolve_source(data)


def _train(model: str, data: str, epochs: int | None, seed: int, path: Path) -> dict[str, Any]:
    from pipeline import train as trainmod

    net, config = trainmod.train(model, data=data, epochs=epochs, seed=seed)
    trainmod.save_checkpoint(path, net, config, force=True)
    return {"val_top1": config["train"]["val_top1"], "seconds": config["train"]["seconds"]}


def _export(checkpoint: Path, path: Path, data: str | None) -> dict[str, Any]:
    from pipeline import export

    # A dynamic batch lets one ONNX serve every bench batch and engine profile.
    return export.export(checkpoint, path, dynamic_batch=True, data=data, force=True)


def _calibrate(onnx_path: Path, path: Path, data: str | None, seed: int) -> dict[str, Any]:
    import calibration
    from pipeline.onnxfile import load_onnx, onnx_config

    config = onnx_config(load_onnx(onnx_path), onnx_path)
    calib_set = calibration.draw(config, data=data, seed=seed)
    calibration.save(path, calib_set, force=True)
    return {"count": int(len(calib_set.images))}


def _quantize(onnx_path: Path, path: Path, precision: str, data: str | None, calib: Path | None = None, max_drop: float | None = None) -> dict[str, Any]:
    from pipeline import precision as precisionmod

    if precision == "fp16":
        return precisionmod.to_fp16(onnx_path, path, data=data, force=True)
    return precisionmod.to_int8(onnx_path, path, calib=calib, max_drop=max_drop, data=data, force=True)


def _backend_available() -> str | None:
    """None when a TensorRT flavour is installed, else why engines are skipped."""
    from pipeline import backend

    if backend.installed_backends():
        return None
    return "no TensorRT flavour is installed (pip install 'edgepipe[rtx]', or JetPack's TensorRT on Jetson)"


def _backend_version() -> str:
    from pipeline import backend

    chosen = backend.get_backend("auto")
    return f"{chosen.name} {chosen.version}"


def _build(onnx_path: Path, engine_path: Path) -> dict[str, Any]:
    from pipeline import build

    return build.build_engine(onnx_path, precision=None, save_engine=engine_path, force=True)


def _validate(reference: Path | None, artifacts: list[Path], data: str | None) -> dict[str, Any]:
    from pipeline import validate

    return validate.validate(reference, [str(a) for a in artifacts], data=data)


def _bench(reference: Path | None, artifacts: list[Path], batches, seconds: float, folder: Path, validation) -> dict[str, Any]:
    from pipeline import bench

    result = bench.bench([str(a) for a in artifacts], checkpoint=reference, batches=tuple(batches), duration_s=seconds, warmup_ms=100)
    write_json_atomic(folder / "bench.json", result)
    # The plot's accuracy axis comes from the validate stage rather than a second evaluation.
    accuracy = {r["artifact"]: r["top1"] for r in (validation or {}).get("rows", []) if r.get("top1") is not None}
    if reference is not None and (validation or {}).get("reference", {}).get("top1") is not None:
        accuracy[str(reference)] = validation["reference"]["top1"]
    bench.write_report(result, folder, accuracy=accuracy)
    return result


def _model_name(reference: Path | None, onnx_path: Path) -> str | None:
    from pipeline.onnxfile import load_onnx, read_metadata

    if onnx_path.is_file():
        return read_metadata(load_onnx(onnx_path)).get("edgepipe.model")
    return None


def machine() -> dict[str, Any]:
    import os

    import psutil

    return {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "tools": tool_versions(),
    }
