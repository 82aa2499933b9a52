"""`edgepipe bench`: latency and throughput of the PyTorch reference and every artifact, side by side.

Per artifact and batch, like trtexec: warm-up by time, then timed iterations (until a duration or
an iteration count); min, mean, median, p90, p95, p99 latency and throughput; for TensorRT engines
also H2D, GPU compute and D2H apart (CUDA events) and the device memory the engine needs.

Each timed iteration is one ``runner.infer(batch)`` between two ``perf_counter`` calls. To show the
harness adds nothing measurable, the same runner is also timed in a bare loop (N calls, timed once
overall) and the ratio is reported. A failing artifact becomes a row with status "error" and its
reason; engines on a machine without an NVIDIA GPU become rows "skipped: no NVIDIA GPU".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.artifacts import Artifact, Kind
from pipeline.checkpoint import check_model_code
from pipeline.errors import EdgepipeError
from pipeline.machine import describe_device
from pipeline.modelspec import ModelCode
from pipeline.onnxinfo import describe, load_model
from pipeline.preprocess import Preprocess
from pipeline.progress import info
from pipeline.runtime import NoGpuError, Runner, open_runner

SKIPPED_NO_GPU = "skipped: no NVIDIA GPU"
FORMATS = {Kind.CHECKPOINT: "pytorch", Kind.ONNX: "onnx", Kind.ENGINE: "engine"}
OVERHEAD_SECONDS = 0.2  # time each round of the harness and bare loops takes when checking overhead
# Every row has every key (None where not measured), so CI can read rows without guessing.
ROW_KEYS = (
    "artifact",
    "format",
    "runtime",
    "precision",
    "batch",
    "status",
    "reason",
    "note",
    "min_ms",
    "mean_ms",
    "median_ms",
    "p90_ms",
    "p95_ms",
    "p99_ms",
    "throughput",
    "h2d_ms",
    "compute_ms",
    "d2h_ms",
    "compute_median_ms",
    "device_memory_mb",
    "iterations",
    "warmup_iterations",
    "timed_s",
)


def bench(
    artifacts: list[str] | tuple[str, ...],
    checkpoint: str | Path | None = None,
    batches: tuple[int, ...] = (1,),
    warmup_ms: float = 200,
    duration_s: float = 3.0,
    iterations: int | None = None,
    cuda_graph: bool = False,
    device: str = "cpu",
    progress: bool = True,
    input_size: tuple[int, int] | None = None,
    code: ModelCode = ModelCode(),
) -> dict[str, Any]:
    """Measure the PyTorch reference (``checkpoint``) and every artifact; the --json object.

    ``code``: the user code the checkpoint's model may be rebuilt from (--model, --trust-model-code).

    ``input_size``: (height, width) for ONNX models whose input leaves them open; without it such a
    model is measured at the output size of the preprocessing stored in it.
    """
    batches = check_settings(batches, warmup_ms, duration_s, iterations, device)
    if not artifacts and checkpoint is None:
        raise EdgepipeError(
            "nothing to measure",
            fix="pass one or more ARTIFACT files (.onnx, .engine) and/or --checkpoint CKPT for the PyTorch reference",
        )
    entries = ([str(checkpoint)] if checkpoint is not None else []) + [str(a) for a in artifacts]
    if checkpoint is not None and Path(checkpoint).is_file() and Artifact.open(checkpoint).kind is Kind.CHECKPOINT:
        check_model_code(checkpoint, code)  # user code refused before anything is measured
    reference_shape = _reference_input_shape(checkpoint, code)
    rows: list[dict[str, Any]] = []
    overhead: dict[str, Any] | None = None
    for path in entries:
        new_rows, measured = _bench_artifact(
            path,
            batches,
            warmup_ms,
            duration_s,
            iterations,
            cuda_graph,
            device,
            reference_shape,
            progress,
            input_size,
            code,
        )
        rows.extend(new_rows)
        if measured and (overhead is None or measured["bare_ms"] < overhead["bare_ms"]):
            overhead = measured  # the fastest runtime shows the harness's own cost best
    return {
        "device": describe_device(device),
        "settings": {
            "batches": list(batches),
            "warmup_ms": warmup_ms,
            "duration_s": duration_s,
            "iterations": iterations,
            "cuda_graph": cuda_graph,
            "device": device,
            "input_size": list(input_size) if input_size else None,
        },
        "rows": rows,
        "overhead": overhead,
        "failed": sum(1 for r in rows if r["status"] == "error"),
    }


def check_settings(
    batches, warmup_ms: float, duration_s: float, iterations: int | None, device: str
) -> tuple[int, ...]:
    """The batches as a sorted tuple of distinct positive ints; a clear error for any bad setting."""
    try:
        values = sorted({int(b) for b in batches})
    except (TypeError, ValueError):
        raise EdgepipeError(f"--batch must be whole numbers, got {batches!r}", fix="pass e.g. --batch 1,8,32") from None
    if not values or values[0] < 1:
        raise EdgepipeError(f"--batch must be 1 or more, got {batches!r}", fix="pass e.g. --batch 1,8,32")
    if warmup_ms < 0:
        raise EdgepipeError(f"--warmup-ms must be 0 or more, got {warmup_ms}", fix="pass e.g. --warmup-ms 200")
    if iterations is None and not duration_s > 0:
        raise EdgepipeError(
            f"--duration-s must be more than 0, got {duration_s}", fix="pass e.g. --duration-s 3, or --iterations N"
        )
    if iterations is not None and iterations < 1:
        raise EdgepipeError(f"--iterations must be 1 or more, got {iterations}", fix="pass e.g. --iterations 100")
    if device not in ("cpu", "cuda"):
        raise EdgepipeError(f"--device must be cpu or cuda, got {device!r}", fix="pass --device cpu or --device cuda")
    return tuple(values)


def _reference_input_shape(checkpoint, code: ModelCode) -> tuple[int, ...] | None:
    if checkpoint is None or not Path(checkpoint).is_file():
        return None
    try:
        with open_runner(checkpoint, code=code) as runner:
            return tuple(runner.input_shape or ()) or None
    except EdgepipeError:
        return None  # the reference's own row reports why


# --- one artifact -----------------------------------------------------------------------------


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


def _bench_artifact(
    path: str,
    batches,
    warmup_ms,
    duration_s,
    iterations,
    cuda_graph,
    device,
    reference_shape,
    progress,
    input_size=None,
    code: ModelCode = ModelCode(),
) -> tuple[list[dict], dict | None]:
    base = dict.fromkeys(ROW_KEYS)
    base["artifact"] = path
    try:
        artifact = Artifact.open(path)
        base.update(format=FORMATS[artifact.kind], precision=str(artifact.precision) if artifact.precision else None)
        runner = open_runner(artifact, device=device, cuda_graph=cuda_graph, code=code)
    except NoGpuError as exc:
        return [dict(base, batch=b, status=SKIPPED_NO_GPU, reason=str(exc)) for b in batches], None
    except EdgepipeError as exc:
        return [dict(base, batch=b, status="error", reason=str(exc)) for b in batches], None

    rows, overhead = [], None
    try:
        base["runtime"] = runner.name
        measured_batches, note = list(batches), None
        if runner.batch_size:
            measured_batches = [runner.batch_size]
            if list(batches) != measured_batches:
                note = f"fixed batch {runner.batch_size}: measured only at batch {runner.batch_size}"
        for b in measured_batches:
            row = dict(base, batch=b)
            if note:
                row["note"] = note
            try:
                input_shape = _input_shape(artifact, runner, reference_shape, input_size)
                x = np.random.default_rng(0).standard_normal((b, *input_shape)).astype(np.float32)
                if progress:
                    info(f"bench: {Path(path).name} ({runner.name}) at batch {b}")
                row.update(measure(runner, x, warmup_ms, duration_s, iterations), status="ok")
                memory = runner.device_memory_bytes()
                if memory is not None:
                    row["device_memory_mb"] = round(memory / 2**20, 3)
                if overhead is None:  # at the smallest batch, where the harness's share is largest
                    overhead = measure_overhead(runner, x, row["mean_ms"])
                    overhead["artifact"], overhead["batch"] = path, b
            except EdgepipeError as exc:
                row.update(status="error", reason=str(exc))
            rows.append(row)
    finally:
        runner.close()
    return rows, overhead


# --- timing -------------------------------------------------------------------------------------


def _timed_loop(
    infer: Callable, x: np.ndarray, iterations: int | None, duration_s: float, split: Callable | None
) -> tuple[list[float], list[dict], float]:
    """The harness: (latencies in seconds, per-iteration engine splits, total seconds)."""
    clock = time.perf_counter
    latencies: list[float] = []
    splits: list[dict] = []
    started = clock()
    deadline = started + duration_s
    while True:
        t0 = clock()
        infer(x)
        t1 = clock()
        latencies.append(t1 - t0)
        if split is not None:
            splits.append(split())
        if (len(latencies) >= iterations) if iterations else (t1 >= deadline):
            break
    return latencies, splits, clock() - started


def measure(
    runner: Runner, x: np.ndarray, warmup_ms: float = 200, duration_s: float = 3.0, iterations: int | None = None
) -> dict[str, Any]:
    """Warm up for ``warmup_ms``, then time ``iterations`` calls (or calls for ``duration_s``)."""
    clock = time.perf_counter
    warm, warm_until = 0, clock() + warmup_ms / 1000.0
    while warmup_ms > 0 and (warm == 0 or clock() < warm_until):
        runner.infer(x)
        warm += 1
    split = runner.last_timing if _has_split(runner) else None
    latencies, splits, total = _timed_loop(runner.infer, x, iterations, duration_s, split)
    result = latency_stats(np.asarray(latencies) * 1000.0, batch=len(x))
    result.update(iterations=len(latencies), warmup_iterations=warm, timed_s=round(total, 4))
    if splits:
        for key in ("h2d_ms", "compute_ms", "d2h_ms"):
            result[key] = round(float(np.mean([s[key] for s in splits])), 4)
        result["compute_median_ms"] = round(float(np.median([s["compute_ms"] for s in splits])), 4)
    return result


def _has_split(runner: Runner) -> bool:
    """True for runners that time H2D, compute and D2H apart (TensorRT engines)."""
    return type(runner).last_timing is not Runner.last_timing


def latency_stats(latencies_ms: np.ndarray, batch: int) -> dict[str, float]:
    """trtexec's summary of per-iteration latencies (ms); throughput in images per second."""
    p50, p90, p95, p99 = np.percentile(latencies_ms, [50, 90, 95, 99])
    mean = float(latencies_ms.mean())
    stats = {
        "min_ms": float(latencies_ms.min()),
        "mean_ms": mean,
        "median_ms": float(p50),
        "p90_ms": float(p90),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
    }
    stats = {k: round(v, 4) for k, v in stats.items()}
    stats["throughput"] = round(batch * 1000.0 / mean, 2)
    return stats


def measure_overhead(runner: Runner, x: np.ndarray, mean_ms: float) -> dict[str, Any]:
    """Per-iteration time of the harness loop against a bare loop of the same calls.

    Both loops run the same number of calls, alternated three times; the fastest of each counts,
    so a burst of noise from other processes does not decide the ratio.
    """
    n = int(min(max(OVERHEAD_SECONDS * 1000.0 / max(mean_ms, 1e-3), 10), 5000))
    split = runner.last_timing if _has_split(runner) else None
    harness, bare = [], []
    for _ in range(3):
        clock = time.perf_counter
        started = clock()
        for _ in range(n):
            runner.infer(x)
        bare.append((clock() - started) / n)
        _, _, total = _timed_loop(runner.infer, x, n, 0.0, split)
        harness.append(total / n)
    harness_ms, bare_ms = min(harness) * 1000.0, min(bare) * 1000.0
    return {
        "harness_ms": round(harness_ms, 5),
        "bare_ms": round(bare_ms, 5),
        "ratio": round(harness_ms / bare_ms, 4),
        "iterations": n,
        "runtime": runner.name,
    }
