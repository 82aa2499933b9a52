"""Start-up time of edgepipe's command line, as ratios against `python -c "import torch"`.

Targets, in CPU time (user + sys of the process and its children, which load on a shared machine
does not inflate as it does wall time): `edgepipe --help` at most 0.1x the CPU time of importing
torch; a cached `build-engine model.onnx --fp16` (the whole process, a second call with nothing
changed) at most 0.3x. Every command is a fresh process, run --runs times in turns with the
baseline so that load falls on all of them alike; medians are compared. Wall time is reported
beside. Exits 1 when a target is missed.

    python benchmarks/startup.py                      # an untrained se_resnet ONNX in a temporary folder
    python benchmarks/startup.py --onnx runs/se/model.onnx --runs 9 --json

To see who imports what: python -X importtime -m pipeline.cli --help 2>&1 | sort -t'|' -k2 -n | tail
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

BIN = Path(sys.executable).parent
TARGETS = {"edgepipe --help": 0.1, "build-engine model.onnx --fp16 (cached)": 0.3}  # CPU-time ratios


def script(name: str, module_call: str) -> list[str]:
    """The installed console script, or the same entry point through this Python."""
    path = BIN / name
    return [str(path)] if path.is_file() else [sys.executable, "-c", module_call]


def make_onnx(folder: Path) -> Path:
    """An untrained se_resnet exported by edgepipe (weights do not change start-up time)."""
    from pipeline import export, images
    from pipeline.checkpoint import build_model, make_config, save_checkpoint

    config = make_config("se_resnet", images.open_source("digits"), 0)[0]
    save_checkpoint(folder / "model.pt", build_model(config).eval(), config, force=True)
    return Path(export.export(folder / "model.pt", folder / "model.onnx", dynamic_batch=True, force=True)["onnx"])


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one fresh process."""
    cpu, started = _children_cpu(), time.perf_counter()
    done = subprocess.run(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds, cpu = time.perf_counter() - started, _children_cpu() - cpu
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    return seconds, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="runs of each command (median taken)")
    parser.add_argument("--onnx", default=None, help="ONNX model for the cached build (default: make one)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="edgepipe-startup-"))
    try:
        if args.onnx:
            onnx_path = work / "model.onnx"
            shutil.copy(args.onnx, onnx_path)
        else:
            onnx_path = make_onnx(work)
        edgepipe = script("edgepipe", "from pipeline.cli import main; main()")
        build_engine = script(
            "build-engine", "from pipeline.commands.build import build_engine_main; build_engine_main()"
        )
        commands = {
            'python -c "import torch"': [sys.executable, "-c", "import torch"],
            "python -c pass": [sys.executable, "-c", "pass"],
            "edgepipe --help": [*edgepipe, "--help"],
            "edgepipe check --help": [*edgepipe, "check", "--help"],
            "build-engine model.onnx --fp16 (cached)": [*build_engine, onnx_path.name, "--fp16"],
        }
        timed(commands["build-engine model.onnx --fp16 (cached)"], work)  # the first call builds; later ones reuse
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, command in commands.items():
                times[name].append(timed(command, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    torch_wall = statistics.median(w for w, _ in times['python -c "import torch"'])
    torch_cpu = statistics.median(c for _, c in times['python -c "import torch"'])
    rows = []
    for name, values in times.items():
        wall, cpu = statistics.median(w for w, _ in values), statistics.median(c for _, c in values)
        target = TARGETS.get(name)
        rows.append(
            {
                "command": name,
                "median_s": round(wall, 3),
                "ratio": round(wall / torch_wall, 3),
                "cpu_s": round(cpu, 3),
                "cpu_ratio": round(cpu / torch_cpu, 3),
                "target": target,
                "ok": None if target is None else cpu / torch_cpu <= target,
            }
        )
    result = {
        "runs": args.runs,
        "python": platform.python_version(),
        "torch": metadata.version("torch"),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "rows": rows,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"Start-up, median of {args.runs} runs (Python {result['python']}, torch {result['torch']}, "
            f"{result['cpus']} CPUs, load {result['load_average'][0]}); ratio = time / import torch's"
        )
        print(f"{'command':44} {'wall s':>7} {'ratio':>6} {'CPU s':>7} {'CPU ratio':>9} {'target (CPU)':>13}")
        for r in rows:
            target = "" if r["target"] is None else f"<= {r['target']}" + (" ok" if r["ok"] else " MISSED")
            print(
                f"{r['command']:44} {r['median_s']:7.3f} {r['ratio']:6.2f} {r['cpu_s']:7.3f} {r['cpu_ratio']:9.3f} {target:>13}"
            )
    return 0 if all(r["ok"] is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
