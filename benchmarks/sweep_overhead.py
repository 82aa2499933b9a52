"""Overhead of `edgepipe sweep` on embedded Ray over the same stages run in one process.

    python benchmarks/sweep_overhead.py [--models se_resnet,eca_resnet] [--precisions fp32,fp16,int8]
                                        [--targets sm_89,sm_86] [--epochs N] [--repeat N] [--work DIR] [--out FILE.md]

Three passes, each in a fresh Python process so each pays the same imports:

1. one process: for each model the target-independent stages (`pipeline.run.run`, engines off),
   then every (precision, target) engine built one after another with TensorRT-RTX, in one process;
2. sweep: `edgepipe sweep --address local` on the same models, precisions and targets, into a fresh
   directory (embedded Ray started and stopped inside the pass);
3. nothing changed: the one-process pass and the sweep again on their own outputs (everything
   reused, 0 tasks submitted); their difference is the fixed cost of a sweep, measured on passes
   short enough that other jobs on a shared machine barely move it.

Target: sweep <= one process + 10 s + 5%.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SETTINGS = {"bench_batches": (1, 8), "bench_seconds": 1.0}


def one_process(args, folder: Path) -> dict:
    from pipeline import run
    from pipeline.build import build_engine
    from pipeline.precision import Precision
    from pipeline.sweep.adapter import onnx_models
    from pipeline.sweep.cluster import parse_target

    timings = {"prepare": 0.0, "build": 0.0}
    for model in args.models:
        started = time.perf_counter()
        report = run.run(
            model=model,
            output=folder / model,
            precisions=tuple(args.precisions),
            engines=False,
            epochs=args.epochs,
            **SETTINGS,
        )
        timings["prepare"] += time.perf_counter() - started
        started = time.perf_counter()
        made = onnx_models(report, folder / model)
        for precision in args.precisions:
            for target in args.targets:
                build_engine(
                    made[Precision(precision)],
                    save_engine=folder / model / f"model.{precision}.{target}.engine",
                    compute_capability=[parse_target(target)],
                )
        timings["build"] += time.perf_counter() - started
    return {"timings": {k: round(v, 2) for k, v in timings.items()}}


def sweep_pass(args, folder: Path) -> dict:
    from pipeline import sweep

    report = sweep.sweep(
        models=args.models,
        precisions=args.precisions,
        targets=args.targets,
        output=folder,
        epochs=args.epochs,
        **SETTINGS,
    )
    return {"submitted": report["submitted"], "cells": report["cells"], "timings": report["timings"]}


def run_pass(name: str, args, folder: Path) -> dict:
    """One pass in a fresh interpreter; wall time measured from outside, imports included."""
    command = [
        sys.executable,
        __file__,
        "--pass",
        name,
        "--folder",
        str(folder),
        "--models",
        ",".join(args.models),
        "--precisions",
        ",".join(args.precisions),
        "--targets",
        ",".join(args.targets),
    ]
    command += ["--epochs", str(args.epochs)] if args.epochs else []
    # RAY_AUTH_MODE: left to the user; unset, Ray 2.60 writes a token to ~/.ray/auth_token.
    env = {"RAY_AUTH_MODE": "disabled", **os.environ, "PYTHONPATH": str(REPO)}
    cpu_before = _children_cpu()
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{name} pass failed:\n{result.stderr[-3000:]}")
    # CPU seconds of the pass and of the processes it waited for: unlike wall time, not inflated
    # when other jobs share the machine.
    cpu = _children_cpu() - cpu_before
    return {
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu, 1),
        **json.loads(result.stdout.strip().splitlines()[-1]),
    }


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="se_resnet,eca_resnet")
    parser.add_argument("--precisions", default="fp32,fp16,int8")
    parser.add_argument("--targets", default="sm_89,sm_86")
    parser.add_argument("--epochs", type=int, default=None, help="Training epochs (default: each model's recipe).")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="Alternate the one-process and sweep passes N times; the fastest of each counts.",
    )
    parser.add_argument("--work", default=None, help="Folder for the passes' outputs (default: a temporary one).")
    parser.add_argument("--out", default=None, help="Append the Markdown table to this file.")
    parser.add_argument("--pass", dest="which", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.models, args.precisions, args.targets = (a.split(",") for a in (args.models, args.precisions, args.targets))
    if args.which:  # inside one pass
        result = (
            one_process(args, Path(args.folder)) if args.which == "one-process" else sweep_pass(args, Path(args.folder))
        )
        print(json.dumps(result))
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="sweep-overhead-"))
    bases, firsts = [], []
    for attempt in range(args.repeat):  # alternating, so a busy spell on a shared machine hits both
        bases.append(run_pass("one-process", args, work / f"one-process-{attempt}"))
        firsts.append(run_pass("sweep", args, work / f"sweep-{attempt}"))
    base_again = run_pass("one-process", args, work / f"one-process-{args.repeat - 1}")
    again = run_pass("sweep", args, work / f"sweep-{args.repeat - 1}")
    base, first = min(bases, key=lambda r: r["seconds"]), min(firsts, key=lambda r: r["seconds"])
    overhead = first["seconds"] - base["seconds"]
    allowed = 10 + 0.05 * base["seconds"]
    cells = len(args.models) * len(args.precisions) * len(args.targets)
    lines = [
        f"{len(args.models)} models ({', '.join(args.models)}) x {len(args.precisions)} precisions x {len(args.targets)} targets = {cells} engines, "
        f"epochs {args.epochs or 'recipe'}, bench batches 1,8 for 1 s; {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"load average {os.getloadavg()[0]:.1f} at the end. Fastest of {args.repeat} alternating runs of each pass "
        f"(one process: {', '.join(str(r['seconds']) for r in bases)} s; sweep: {', '.join(str(r['seconds']) for r in firsts)} s).",
        "",
        "| pass | wall (s) | CPU (s) | tasks submitted | Ray start + node probe (s) | model stages on the driver (s) | engines: building / waiting for cells (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| one process | {base['seconds']:.1f} | {base['cpu_seconds']:.1f} | | | {base['timings']['prepare']:.1f} | {base['timings']['build']:.1f} |",
        f"| sweep, embedded Ray | {first['seconds']:.1f} | {first['cpu_seconds']:.1f} | {first['submitted']} | {first['timings']['connect_and_probe']:.1f} | "
        f"{first['timings']['prepare']:.1f} | {first['timings']['wait_for_cells']:.1f} |",
        f"| one process again, nothing changed | {base_again['seconds']:.1f} | {base_again['cpu_seconds']:.1f} | | | "
        f"{base_again['timings']['prepare']:.1f} | {base_again['timings']['build']:.1f} |",
        f"| re-sweep, nothing changed | {again['seconds']:.1f} | {again['cpu_seconds']:.1f} | {again['submitted']} | {again['timings']['connect_and_probe']:.1f} | "
        f"{again['timings']['prepare']:.1f} | {again['timings']['wait_for_cells']:.1f} |",
        "",
        f"Overhead of the sweep: {overhead:+.1f} s wall ({100 * overhead / base['seconds']:+.1f}%), "
        f"{first['cpu_seconds'] - base['cpu_seconds']:+.1f} s CPU ({100 * (first['cpu_seconds'] - base['cpu_seconds']) / base['cpu_seconds']:+.1f}%); "
        f"target <= {allowed:.1f} s (10 s + 5%): {'met' if overhead <= allowed else 'NOT met'} on wall time. "
        f"Fixed cost of a sweep (re-sweep minus one process again, both with nothing to do): {again['seconds'] - base_again['seconds']:+.1f} s.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
