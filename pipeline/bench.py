"""`edgepipe bench`: latency and throughput of the PyTorch reference and every artifact, side by side.

Per artifact and batch, trtexec's figures (``pipeline.timing``) and the device memory an engine
needs; a failing artifact is a row "error" with its reason, an engine without an NVIDIA GPU a row
"skipped: no NVIDIA GPU". On a Jetson, ``jetson`` records the device's state and each row's
``power`` each rail's mean power over its timed window (``pipeline.deploy.jetson``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.artifacts import Artifact, Kind
from pipeline.checkpoint import check_model_code, config_of
from pipeline.cuda import current_compute_capability
from pipeline.defaults import SKIPPED_NO_GPU
from pipeline.deploy import jetson
from pipeline.errors import EdgepipeError
from pipeline.machine import describe_device
from pipeline.modelspec import ModelCode
from pipeline.onnxinfo import describe, load_model
from pipeline.preprocess import Preprocess
from pipeline.progress import info
from pipeline.runtime import NoGpuError, Runner, open_runner
from pipeline.timing import LATENCY_KEYS, SPLIT_KEYS, measure, measure_overhead

FORMATS = {Kind.CHECKPOINT: "pytorch", Kind.ONNX: "onnx", Kind.ENGINE: "engine"}
# Every row has every key (None where not measured), so CI can read rows without guessing.
ROW_KEYS = (
    *("artifact", "format", "runtime", "precision", "batch", "status", "reason", "note"),
    *(*LATENCY_KEYS, "throughput", *SPLIT_KEYS, "compute_median_ms", "device_memory_mb"),
    *("iterations", "warmup_iterations", "timed_s", "sustained", "power"),
)


@dataclass(frozen=True)
class BenchSettings:
    """How each artifact is measured: batches, warm-up, how long, on which device, at which input size.

    ``input_size``: (height, width) for ONNX models whose input leaves them open, else the output size of the
    preprocessing stored in them. ``code``: the user code the checkpoint's model may be rebuilt from.
    """

    batches: tuple[int, ...] = (1,)
    warmup_ms: float = 200
    duration_s: float = 3.0
    iterations: int | None = None
    cuda_graph: bool = False
    device: str = "cpu"
    progress: bool = True
    input_size: tuple[int, int] | None = None
    code: ModelCode = field(default_factory=ModelCode)
    sustain_s: float | None = None
    sustain_window_s: float = 60.0
    sysfs_root: str | None = None  # where a Jetson's state is read; None: $EDGEPIPE_SYSFS_ROOT, else "/"

    def __post_init__(self) -> None:
        object.__setattr__(self, "batches", _check_batches(self.batches))
        if self.warmup_ms < 0:
            raise EdgepipeError(f"--warmup-ms must be 0 or more, got {self.warmup_ms}", fix="pass e.g. --warmup-ms 200")
        if self.iterations is None and not self.duration_s > 0:
            raise EdgepipeError(
                f"--duration-s must be more than 0, got {self.duration_s}",
                fix="pass e.g. --duration-s 3, or --iterations N",
            )
        if self.iterations is not None and self.iterations < 1:
            raise EdgepipeError(
                f"--iterations must be 1 or more, got {self.iterations}", fix="pass e.g. --iterations 100"
            )
        if self.sustain_s is not None and self.iterations is not None:
            raise EdgepipeError("--sustain times by duration, not --iterations", fix="drop --iterations")
        if self.sustain_s is not None and (not self.sustain_window_s > 0 or self.sustain_s < 2 * self.sustain_window_s):
            raise EdgepipeError(
                f"--sustain {self.sustain_s:g}s is shorter than two windows of {self.sustain_window_s:g}s, "
                "so there is no drift to report",
                fix="pass e.g. --sustain 10m (windows of a minute), or a shorter --sustain-window",
            )
        if self.device not in ("cpu", "cuda"):
            raise EdgepipeError(
                f"--device must be cpu or cuda, got {self.device!r}", fix="pass --device cpu or --device cuda"
            )

    @property
    def timed_s(self) -> float:
        """Seconds each row is timed for: the sustained duration, else --duration-s."""
        return self.sustain_s or self.duration_s

    def record(self) -> dict[str, Any]:
        """The settings as the --json object reports them (not how progress, user code or a Jetson's state are read)."""
        record = {
            f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("progress", "code", "sysfs_root")
        }
        return record | {
            "batches": list(self.batches),
            "input_size": list(self.input_size) if self.input_size else None,
            "sustain_window_s": self.sustain_window_s if self.sustain_s else None,
        }


def bench(
    artifacts: list[str] | tuple[str, ...],
    checkpoint: str | Path | None = None,
    settings: BenchSettings | None = None,
    **flags: Any,
) -> dict[str, Any]:
    """Measure the PyTorch reference (``checkpoint``) and every artifact; the --json object. ``settings``, or
    its fields as keywords (``batches=(1, 8)``, ``iterations=3``, ``progress=False``)."""
    settings = settings or BenchSettings(**flags)
    if not artifacts and checkpoint is None:
        raise EdgepipeError(
            "nothing to measure",
            fix="pass one or more ARTIFACT files (.onnx, .engine) and/or --checkpoint CKPT for the PyTorch reference",
        )
    entries = ([str(checkpoint)] if checkpoint is not None else []) + [str(a) for a in artifacts]
    if checkpoint is not None and Path(checkpoint).is_file() and Artifact.open(checkpoint).kind is Kind.CHECKPOINT:
        check_model_code(checkpoint, settings.code)  # user code refused before anything is measured
    telemetry = jetson.open_telemetry(settings.sysfs_root)  # unknown rail names are refused before measuring
    start = jetson.read_state(telemetry.root) if telemetry is not None else {"jetson": False}
    try:  # the input shape the checkpoint records, read without building its model (its row reports any error)
        reference_shape = None if checkpoint is None else tuple(config_of(checkpoint)["input_shape"]) or None
    except EdgepipeError:
        reference_shape = None
    measured = [_bench_artifact(path, settings, reference_shape, telemetry) for path in entries]
    rows = [row for artifact_rows, _ in measured for row in artifact_rows]
    # the fastest runtime shows the harness's own cost best
    overhead = min((o for _, o in measured if o), key=lambda o: o["bare_ms"], default=None)
    return {
        "device": describe_device(settings.device, current_compute_capability()),
        "settings": settings.record(),
        "jetson": jetson.bench_record(start, telemetry),
        "rows": rows,
        "overhead": overhead,
        "failed": sum(1 for r in rows if r["status"] == "error"),
    }


def _check_batches(batches) -> tuple[int, ...]:
    try:
        values = sorted({int(b) for b in batches})
    except (TypeError, ValueError):
        raise EdgepipeError(f"--batch must be whole numbers, got {batches!r}", fix="pass e.g. --batch 1,8,32") from None
    if not values or values[0] < 1:
        raise EdgepipeError(f"--batch must be 1 or more, got {batches!r}", fix="pass e.g. --batch 1,8,32")
    return tuple(values)


def _input_shape(
    artifact: Artifact, runner: Runner, reference_shape, input_size: tuple[int, int] | None
) -> tuple[int, ...]:
    """One sample's shape: the runner's, else (ONNX with dynamic H/W) --input-size or the stored preprocessing's size, else the reference's."""
    if runner.input_shape:
        return tuple(runner.input_shape)
    if artifact.kind is Kind.ONNX:
        model = load_model(artifact.path)
        info = describe(model)
        stored = Preprocess.from_onnx(model)
        size = input_size or (stored.output_hw if stored else None)
        if info.dynamic_hw and size is None:
            raise EdgepipeError(
                f"{artifact.path} has dynamic height/width ({info.input_name}: {info.input.text()}) and no stored preprocessing says the size",
                fix="pass --input-size HxW, e.g. --input-size 224x224",
            )
        return info.sample_shape(*(size or (None, None)))
    if reference_shape:
        return tuple(reference_shape)
    raise EdgepipeError(
        f"{artifact.path} does not say its input shape",
        fix="pass --checkpoint CKPT so the reference's input shape is used",
    )


def _bench_artifact(path: str, settings: BenchSettings, reference_shape, telemetry) -> tuple[list[dict], dict | None]:
    """The rows of one artifact (one per batch) and, at its smallest batch, the harness's overhead."""
    base = dict.fromkeys(ROW_KEYS) | {"artifact": path}
    try:
        artifact = Artifact.open(path)
        base.update(format=FORMATS[artifact.kind], precision=str(artifact.precision) if artifact.precision else None)
        runner = open_runner(artifact, device=settings.device, cuda_graph=settings.cuda_graph, code=settings.code)
    except EdgepipeError as exc:  # an engine without an NVIDIA GPU here is skipped, not failed
        status = SKIPPED_NO_GPU if isinstance(exc, NoGpuError) else "error"
        return [dict(base, batch=b, status=status, reason=str(exc)) for b in settings.batches], None
    rows, overhead = [], None
    with runner:
        base["runtime"] = runner.name
        measured_batches = [runner.batch_size] if runner.batch_size else list(settings.batches)
        fixed = measured_batches != list(settings.batches)
        note = f"fixed batch {runner.batch_size}: measured only at batch {runner.batch_size}" if fixed else None
        for b in measured_batches:
            row = dict(base, batch=b, note=note)
            try:
                shape = _input_shape(artifact, runner, reference_shape, settings.input_size)
                if settings.progress:
                    info(f"bench: {artifact.path.name} ({runner.name}) at batch {b}")
                x = np.random.default_rng(0).standard_normal((b, *shape)).astype(np.float32)
                row.update(_measure_row(runner, x, settings, telemetry), status="ok")
                if overhead is None:  # at the smallest batch, where the harness's share is largest
                    overhead = dict(measure_overhead(runner, x, row["mean_ms"]), artifact=path, batch=b)
            except EdgepipeError as exc:
                row.update(status="error", reason=str(exc))
            rows.append(row)
    return rows, overhead


def _measure_row(runner: Runner, x: np.ndarray, settings: BenchSettings, telemetry) -> dict[str, Any]:
    """trtexec's figures of one batch, the device memory an engine needs, and on a Jetson each rail's power."""
    window = settings.sustain_window_s if settings.sustain_s else None
    row = measure(runner, x, settings.warmup_ms, settings.timed_s, settings.iterations, window, telemetry)
    memory = runner.device_memory_bytes()
    if memory is not None:
        row["device_memory_mb"] = round(memory / 2**20, 3)
    recorded = row.pop("telemetry", None)
    if recorded is not None and recorded["rails"]:
        row["power"] = {rail: {k: float(f"{v:.6g}") for k, v in f.items()} for rail, f in recorded["rails"].items()}
    return row
