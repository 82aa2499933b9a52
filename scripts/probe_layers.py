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


def layer(name: str, needs: tuple[str, ...] = ()):
    """Run the decorated step as layer ``name``; record ok, its facts, or its exact error."""

    def wrap(step):
        def run(*args, **kwargs):
            missing = [n for n in needs if not passed(n)]
            if missing:
                RESULTS.append({"layer": name, "ok": None, "skipped": f"needs {', '.join(missing)}"})
                return None
            start = time.perf_counter()
            try:
                facts = step(*args, **kwargs) or {}
            except Exception as exc:  # the point of the probe: every failure is recorded, never fatal
                RESULTS.append(
                    {
                        "layer": name,
                        "ok": False,
                        "error": f"{type(exc).__name__}: {exc}",
                        "traceback": traceback.format_exc(limit=6),
                        "seconds": round(time.perf_counter() - start, 3),
                    }
                )
                return None
            RESULTS.append({"layer": name, "ok": True, "seconds": round(time.perf_counter() - start, 3), **facts})
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
    for step in cuda_layers:
        step()
    tensorrt_module.run_layers(args.onnx, [int(b) for b in args.batches.split(",")], args.iterations)
    for r in RESULTS:
        r.pop("held", None)  # live TensorRT objects, not facts
    summary = {"python": platform.python_version(), "layers": RESULTS}
    args.out.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    for r in RESULTS:
        state = {True: "ok", False: "FAILED", None: "skipped"}[r["ok"]]
        detail = r.get("error") or r.get("skipped") or {k: v for k, v in r.items() if k not in ("layer", "ok", "held")}
        print(f"layer {r['layer']}: {state}: {detail}")
    return 0
