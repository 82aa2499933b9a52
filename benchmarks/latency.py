"""Latency of one model through the pipeline: PyTorch, ONNX Runtime and (on a GPU) TensorRT engines.

Trains the default model (or takes --checkpoint), exports a dynamic-batch ONNX, builds FP32 and
FP16 engines where an NVIDIA GPU and TensorRT are present, benches everything at batches 1, 8
and 32, and writes a Markdown table.

    python benchmarks/latency.py --out benchmarks/latency.md
    python benchmarks/latency.py --checkpoint runs/se/se_resnet.pt --device cuda --cuda-graph
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from pipeline import bench, benchreport, build, cuda, export, train
from pipeline.checkpoint import save_checkpoint
from pipeline.errors import EdgepipeError
from pipeline.tensorrt import backend as backendmod


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="checkpoint to use instead of training the default model")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the model's recipe)")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--duration-s", type=float, default=3.0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--cuda-graph", action="store_true")
    parser.add_argument(
        "--work", default=None, help="folder for the checkpoint, ONNX and engines (default: a temporary one)"
    )
    parser.add_argument("--out", default="benchmarks/latency.md")
    args = parser.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="edgepipe-latency-"))
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(args.checkpoint) if args.checkpoint else work / "model.pt"
    if not args.checkpoint:
        model, config = train.train(epochs=args.epochs, progress=True)
        save_checkpoint(checkpoint, model, config)
    onnx_path = work / "model.onnx"
    export.export(checkpoint, onnx_path, dynamic_batch=True, force=True)

    artifacts, note = [str(onnx_path)], "no NVIDIA GPU: TensorRT engines not built"
    if cuda.current_compute_capability() and backendmod.installed_backends():
        be = backendmod.get_backend()
        targets = ["current"] if be.name == backendmod.TENSORRT_RTX else None
        shapes = {"min": "input:1x1x32x32", "opt": "input:8x1x32x32", "max": "input:32x1x32x32"}
        for precision in ("fp32", "fp16"):
            try:
                result = build.build_engine(
                    onnx_path,
                    precision=precision,
                    save_engine=work / f"model_{precision}.engine",
                    shapes=shapes,
                    compute_capability=targets,
                    force=True,
                )
                artifacts.append(result["engine"])
            except EdgepipeError as exc:
                print(f"{precision} engine not built: {exc}")
        note = f"engines built with {be.display}"

    batches = tuple(int(b) for b in args.batches.split(","))
    result = bench.bench(
        artifacts,
        checkpoint=checkpoint,
        batches=batches,
        duration_s=args.duration_s,
        cuda_graph=args.cuda_graph,
        device=args.device,
    )
    text = benchreport.to_markdown(result) + f"\n{note}.\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
