"""The timing harness: trtexec's warm-up and timed iterations, its latency summary, and the harness's own cost.

Each timed iteration is one ``runner.infer(batch)`` between two ``perf_counter`` calls. To show the
harness adds nothing measurable, the same runner is also timed in a bare loop (N calls, timed once
overall) and the ratio is reported.
"""

from __future__ import annotations

import time
from array import array
from typing import Any

import numpy as np

from pipeline.runner import Runner

OVERHEAD_SECONDS = 0.2  # time each round of the harness and bare loops takes when checking overhead
LATENCY_KEYS = ("min_ms", "mean_ms", "median_ms", "p90_ms", "p95_ms", "p99_ms")  # trtexec's summary
SPLIT_KEYS = ("h2d_ms", "compute_ms", "d2h_ms")  # an engine's inference, timed apart by CUDA events


def _timed_loop(
    runner: Runner, x: np.ndarray, iterations: int | None, duration_s: float
) -> tuple[array, list[dict], float]:
    """The harness: (latencies in seconds, per-iteration engine splits, total seconds)."""
    clock, infer = time.perf_counter, runner.infer
    # runners that time H2D, compute and D2H apart (TensorRT engines) say so after each call
    split = runner.last_timing if type(runner).last_timing is not Runner.last_timing else None
    latencies = array("d")  # 8 bytes an iteration: an hour of --sustain at 0.1 ms holds 36M of them
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
    runner: Runner,
    x: np.ndarray,
    warmup_ms: float = 200,
    duration_s: float = 3.0,
    iterations: int | None = None,
    window_s: float | None = None,
    telemetry: Any = None,
) -> dict[str, Any]:
    """Warm up for ``warmup_ms``, then time ``iterations`` calls (or calls for ``duration_s``); ``window_s``: also
    the median per window of that length and the drift (``sustained``); ``telemetry`` (``start()``,
    ``stop(iterations, seconds)``, a Jetson's): started and stopped around the timed loop only, its record kept."""
    clock = time.perf_counter
    warm, warm_until = 0, clock() + warmup_ms / 1000.0
    while warmup_ms > 0 and (warm == 0 or clock() < warm_until):
        runner.infer(x)
        warm += 1
    if telemetry is not None:
        telemetry.start()
    latencies, splits, total = _timed_loop(runner, x, iterations, duration_s)
    recorded = telemetry.stop(len(latencies), total) if telemetry is not None else None
    latencies_ms = np.asarray(latencies) * 1000.0
    mean = float(latencies_ms.mean())
    figures = (latencies_ms.min(), mean, *np.percentile(latencies_ms, [50, 90, 95, 99]))  # trtexec's summary
    result: dict[str, Any] = {k: round(float(v), 4) for k, v in zip(LATENCY_KEYS, figures)}
    result.update(throughput=round(len(x) * 1000.0 / mean, 2), iterations=len(latencies), warmup_iterations=warm)
    result["timed_s"] = round(total, 4)
    if window_s:
        result["sustained"] = sustained(latencies_ms, window_s)
    if recorded is not None:
        result["telemetry"] = recorded
    if splits:
        for key in SPLIT_KEYS:
            result[key] = round(float(np.mean([s[key] for s in splits])), 4)
        result["compute_median_ms"] = round(float(np.median([s["compute_ms"] for s in splits])), 4)
    return result


def sustained(latencies_ms: np.ndarray, window_s: float) -> dict[str, Any]:
    """The median latency of each window of about ``window_s`` seconds, and the drift of the last from the first:
    ``round(inference time / window_s)`` windows of equal length (at least one), by each iteration's end on the
    clock of summed latencies, so no window is a stub of a few iterations."""
    ends = np.cumsum(latencies_ms) / 1000.0
    count = max(1, int(round(ends[-1] / window_s)))
    index = np.minimum((ends * count / ends[-1]).astype(int), count - 1)  # iteration -> its window
    p50 = [float(np.median(latencies_ms[index == i])) for i in range(count) if np.any(index == i)]
    drift = 100.0 * (p50[-1] - p50[0]) / p50[0] if len(p50) > 1 and p50[0] > 0 else None
    return {
        "window_s": round(float(ends[-1]) / count, 3),
        "p50_ms": [float(f"{v:.6g}") for v in p50],
        "iterations": [int(np.sum(index == i)) for i in range(count) if np.any(index == i)],
        "drift_pct": None if drift is None else round(drift, 2),
    }


def measure_overhead(runner: Runner, x: np.ndarray, mean_ms: float) -> dict[str, Any]:
    """Per-iteration time of the harness loop against a bare loop of the same calls, alternated three times;
    the fastest of each counts, so a burst of noise from other processes does not decide the ratio."""
    n = int(min(max(OVERHEAD_SECONDS * 1000.0 / max(mean_ms, 1e-3), 10), 5000))
    harness, bare = [], []
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(n):
            runner.infer(x)
        bare.append((time.perf_counter() - started) / n)
        _, _, total = _timed_loop(runner, x, n, 0.0)
        harness.append(total / n)
    harness_ms, bare_ms = min(harness) * 1000.0, min(bare) * 1000.0
    return {
        "harness_ms": round(harness_ms, 5),
        "bare_ms": round(bare_ms, 5),
        "ratio": round(harness_ms / bare_ms, 4),
        "iterations": n,
        "runtime": runner.name,
    }
