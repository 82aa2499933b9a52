"""The probe's bookkeeping: one record per layer (ok, its facts, or its exact error), and the command line."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS: list[dict] = []
SAVE_TO: list[Path] = []  # the --out file, rewritten after every layer: a crash (a segfault in a driver
# or in TensorRT) still leaves every layer before it on disk, and the missing one is the one that crashed


def record(entry: dict) -> None:
    RESULTS.append(entry)
    state = {True: "ok", False: "FAILED", None: "skipped"}[entry["ok"]]
    detail = (
        entry.get("error")
        or entry.get("skipped")
        or {k: v for k, v in entry.items() if k not in ("layer", "ok", "held")}
    )
    print(f"layer {entry['layer']}: {state}: {detail}", flush=True)
    for path in SAVE_TO:
        layers = [{k: v for k, v in r.items() if k != "held"} for r in RESULTS]
        path.write_text(
            json.dumps({"python": platform.python_version(), "layers": layers}, indent=1, default=str) + "\n"
        )


def layer(name: str, needs: tuple[str, ...] = ()):
    """Run the decorated step as layer ``name``; record ok, its facts, or its exact error."""

    def wrap(step):
        def run(*args, **kwargs):
            missing = [n for n in needs if not passed(n)]
            if missing:
                record({"layer": name, "ok": None, "skipped": f"needs {', '.join(missing)}"})
                return None
            start = time.perf_counter()
            try:
                facts = step(*args, **kwargs) or {}
            except Exception as exc:  # the point of the probe: every failure is recorded, never fatal
                record(
                    {
                        "layer": name,
                        "ok": False,
                        "error": f"{type(exc).__name__}: {exc}",
                        "traceback": traceback.format_exc(limit=6),
                        "seconds": round(time.perf_counter() - start, 3),
                    }
                )
                return None
            record({"layer": name, "ok": True, "seconds": round(time.perf_counter() - start, 3), **facts})
            return facts

        return run

    return wrap


def passed(name: str) -> bool:
    return any(r["layer"] == name and r["ok"] for r in RESULTS)


def check(result: int, what: str) -> None:
    if result != 0:
        raise RuntimeError(f"{what} returned CUDA error {result}")


def main_with(cuda_layers, tensorrt_module, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Probe each GPU layer and record what works.")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    parser.add_argument("--onnx", type=Path, nargs="*", default=[], help="ONNX models to build and time")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--iterations", type=int, default=200)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    SAVE_TO.append(args.out)
    for step in cuda_layers:
        step()
    tensorrt_module.run_layers(args.onnx, [int(b) for b in args.batches.split(",")], args.iterations)
    return 0
