"""FP16 and INT8 ONNX for every zoo model, validated against PyTorch; writes docs/precision.md.

    python benchmarks/precision.py [CHECKPOINT_DIR] [--models se_resnet,eca_resnet] [--out docs/precision.md]

For each model: reuse CHECKPOINT_DIR/<model>.pt (e.g. kept by benchmarks/zoo.py --keep) or train it
with its default recipe, export to ONNX, draw a 512-image calibration set, quantize to FP16 and
INT8 (default settings), and validate all three against PyTorch on the held-out split.
Targets: FP16 within 0.1 point of PyTorch top-1 with >= 99.9% agreement; INT8 within 0.5 point
with >= 99% agreement; calibration + INT8 quantization <= 30 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import calibration  # noqa: E402
import models  # noqa: E402
from pipeline import export, quantize, train, validate  # noqa: E402
from pipeline.checkpoint import save_checkpoint

TARGETS = {"fp32": (0.0, 100.0), "fp16": (0.1, 99.9), "int8": (0.5, 99.0)}


def bench_model(name: str, checkpoints: Path | None, folder: Path, max_drop: float | None) -> tuple[list[str], float]:
    checkpoint = checkpoints / f"{name}.pt" if checkpoints else None
    if checkpoint is None or not checkpoint.is_file():
        net, config = train.train(name, progress=False)
        checkpoint = save_checkpoint(folder / f"{name}.pt", net, config, force=True)
    onnx_path = folder / f"{name}.onnx"
    export.export(checkpoint, onnx_path, dynamic_batch=True, force=True)
    quantize.to_fp16(onnx_path, folder / f"{name}.fp16.onnx", force=True)
    started = time.perf_counter()
    calib = calibration.save(
        folder / f"{name}.calib.npz", calibration.draw_for(checkpoint, num=calibration.DEFAULT_NUM), force=True
    )
    int8 = quantize.to_int8(onnx_path, folder / f"{name}.int8.onnx", calib=calib, max_drop=max_drop, force=True)
    calib_quant_seconds = time.perf_counter() - started
    result = validate.validate(checkpoint, [onnx_path, folder / f"{name}.fp16.onnx", folder / f"{name}.int8.onnx"])
    rows = []
    for row in result["rows"]:
        if row["status"] != "ok":
            rows.append(f"| {name} | {row['precision']} | error: {row['error']} | | | | | | NO |")
            continue
        max_delta, min_agreement = TARGETS[row["precision"]]
        ok = abs(row["delta"]) <= max_delta + 1e-9 and row["agreement"] >= min_agreement
        seconds = f"{calib_quant_seconds:.1f}" if row["precision"] == "int8" else ""
        excluded = ", ".join(int8["excluded_ops"]) if row["precision"] == "int8" else ""
        if row["precision"] == "int8" and int8.get("kept_nodes"):
            excluded += f" + {len(int8['kept_nodes'])} node(s) kept by the budget: " + ", ".join(int8["kept_nodes"])
        rows.append(
            f"| {name} | {row['precision']} | {result['reference']['top1']:.2f} | {row['top1']:.2f} | {row['delta']:+.2f} | "
            f"{row['agreement']:.2f} | {row['max_abs_diff']:.3g} | {row['cosine']:.5f} | {seconds} | {excluded} | {'yes' if ok else 'NO'} |"
        )
    return rows, calib_quant_seconds


START, END = "<!-- results:start -->", "<!-- results:end -->"


def write_results(path: Path, table: str) -> None:
    """Replace the results block of ``path`` (keeping the prose around it), or write a new file."""
    text = path.read_text() if path.is_file() else ""
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + START + "\n" + table + "\n" + END + rest.split(END, 1)[1]
    else:
        text = "# FP16 and INT8 accuracy against PyTorch\n\n" + START + "\n" + table + "\n" + END + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="?", default=None, help="folder with <model>.pt checkpoints to reuse")
    parser.add_argument("--models", default=",".join(models.names()))
    parser.add_argument("--out", default="docs/precision.md")
    parser.add_argument(
        "--max-drop",
        default="0.5",
        help="INT8 accuracy budget in points, as 'edgepipe run' uses by default; 'none' for plain PTQ",
    )
    args = parser.parse_args()
    max_drop = None if args.max_drop.lower() == "none" else float(args.max_drop)
    checkpoints = Path(args.checkpoints) if args.checkpoints else None

    rows = []
    with tempfile.TemporaryDirectory(prefix="edgepipe-precision-") as tmp:
        for name in args.models.split(","):
            model_rows, _ = bench_model(name, checkpoints, Path(tmp), max_drop)
            rows += model_rows
            print("\n".join(model_rows), flush=True)
    header = [
        "# FP16 and INT8 accuracy against PyTorch",
        "",
        f"Produced by `python benchmarks/precision.py` on {platform.machine()} with {os.cpu_count()} CPU cores "
        "(ONNX Runtime CPU provider; timings are noisy on shared cores). Held-out split of the bundled digits "
        "(359 images); INT8 is calibrated on 512 training images (entropy, Sigmoid/Softmax kept in FP16, "
        f"non-quantized ops FP16; accuracy budget --max-drop {args.max_drop}). Targets: FP16 |Δ| <= 0.1 point and >= 99.9% agreement; INT8 |Δ| <= 0.5 point and "
        ">= 99% agreement; calibration + quantization <= 30 s.",
        "",
        "| model | precision | PyTorch top-1 | top-1 | Δ pts | agreement % | max abs diff | cosine | calib+quant s | kept high-precision ops | meets target |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    write_results(Path(args.out), "\n".join(header[2:] + rows))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
