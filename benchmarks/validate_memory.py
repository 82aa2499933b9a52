"""Peak memory and throughput of `edgepipe validate` on a folder of the user's images, for a model edgepipe did not export.

Exports the foreign SE classifier (tests/foreign_models.py: 3x224x224, no edgepipe metadata),
writes 224x224 noise JPEGs into a temporary ImageFolder (2,000 and 20,000 by default) and runs

    edgepipe validate --reference se.onnx se_copy.onnx --data DIR --resize 256 --crop 224 --mean ... --std ...

as a fresh process per set: the reference and one artifact (an identical copy, so both runners do
the same work) on ONNX Runtime CPU, every image decoded once by the loader's workers. It measures

- peak PSS of the whole process tree (edgepipe and its decoding workers, sampled every 100 ms;
  PSS counts the pages forked workers share with the main process once: what the machine spends),
  and the peak of the tree's summed RSS (an upper bound that counts shared pages in every process);
- peak RSS of the main process;
- validation throughput (images per second through both runners, from validate's own timing)
  against a bare loop that runs the same two ONNX Runtime sessions over the same images already
  decoded and preprocessed in memory (``--bare`` of them), batch for batch; and the CPU time per
  image of each (validate's includes start-up and its decoding workers), which other load on a
  shared machine inflates less than wall-clock time.

All 20,000 images as float32 would take 12 GB; streamed, memory should not grow with the count.

    python benchmarks/validate_memory.py                         # 2,000 and 20,000
    python benchmarks/validate_memory.py --counts 500,2000 --keep /tmp/imgs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "tests")]  # data_memory's image folders and machine line; the foreign test models

from data_memory import PREPROCESS, TreeSampler, gb, machine, make_folder  # noqa: E402

FLAGS = [f"--{key}={value}" for key, value in PREPROCESS.items()]
TARGET_BYTES = 1.2e9
BATCH = 64


def se_resnet18():
    """A ResNet-18 with a squeeze-and-excitation gate in every block (about 1.8 G MACs at 224x224), seeded."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                nn.BatchNorm2d(cout),
            )
            self.se = nn.Sequential(
                nn.AdaptiveAvgPool2d(1),
                nn.Conv2d(cout, cout // 16, 1),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout // 16, cout, 1),
                nn.Sigmoid(),
            )
            self.skip = (
                nn.Identity()
                if stride == 1 and cin == cout
                else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            )

        def forward(self, x):
            y = self.body(x)
            return torch.relu(y * self.se(y) + self.skip(x))

    torch.manual_seed(0)
    widths, layers, cin = (64, 128, 256, 512), [], 64
    for i, width in enumerate(widths):
        layers += [Block(cin, width, 1 if i == 0 else 2), Block(width, width, 1)]
        cin = width
    stem = nn.Sequential(
        nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
    )
    return nn.Sequential(stem, *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10)).eval()


def export_models(folder: Path, model: str = "small") -> tuple[Path, Path]:
    """The reference and an identical artifact: the foreign SE classifier (about 40 M MACs) or an SE-ResNet-18 (1.8 G)."""
    from foreign_models import _batch_axes, _export, export_se_classifier

    if model == "small":
        reference = export_se_classifier(folder / "se.onnx")
    else:
        import torch

        reference = _export(
            se_resnet18(),
            folder / "se_resnet18.onnx",
            (torch.randn(1, 3, 224, 224),),
            ["image"],
            ["logits"],
            _batch_axes(["image", "logits"], "dynamic"),
            17,
        )
    artifact = folder / f"{reference.stem}_copy.onnx"
    shutil.copyfile(reference, artifact)
    return reference, artifact


def validate_in_a_fresh_process(
    reference: Path, artifact: Path, folder: Path, workers: int | None, batch_size: int = BATCH
) -> dict:
    command = [
        sys.executable,
        "-c",
        "from pipeline.cli import main; main()",
        "validate",
        "--reference",
        str(reference),
        str(artifact),
        "--data",
        str(folder),
        *FLAGS,
        "--json",
        "--batch-size",
        str(batch_size),
        *(["--workers", str(workers)] if workers is not None else []),
    ]
    started, cpu_before = time.perf_counter(), _children_cpu()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    with TreeSampler(process.pid) as sampler:
        stdout, _ = process.communicate()
    wall, cpu = time.perf_counter() - started, _children_cpu() - cpu_before  # edgepipe and its joined workers
    if process.returncode != 0:
        raise SystemExit(f"edgepipe validate failed (exit {process.returncode}): {stdout[-500:]}")
    result = json.loads(stdout)
    return {
        "count": result["reference"]["samples"],
        "seconds": result["seconds"],
        "images_per_s": result["images_per_s"],
        "wall_s": wall,
        "tree_peak_pss_bytes": sampler.peak_pss,
        "tree_peak_rss_sum_bytes": sampler.peak_rss_sum,
        "main_peak_rss_bytes": sampler.peak_main_rss,
        "agreement": result["rows"][0]["agreement"],
        "cpu_ms_per_image": cpu / result["reference"]["samples"] * 1e3,
    }


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bare_loop(reference: Path, artifact: Path, folder: Path, limit: int) -> dict:
    """The two ONNX Runtime sessions over ``limit`` images already decoded and preprocessed, batch by batch."""
    import onnxruntime as ort

    from pipeline import images
    from pipeline.preprocess import Preprocess

    source = images.open_source(str(folder))
    x, _ = source.batches(Preprocess.from_dict(PREPROCESS), np.arange(min(limit, len(source))), workers=0).collect()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sessions = [
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]) for path in (reference, artifact)
    ]
    name = sessions[0].get_inputs()[0].name
    sessions[0].run(None, {name: x[:BATCH]})  # warm up as validate's first batch does
    sessions[1].run(None, {name: x[:BATCH]})
    started, cpu_started = time.perf_counter(), time.process_time()
    for start in range(0, len(x), BATCH):
        for session in sessions:
            session.run(None, {name: x[start : start + BATCH]})
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return {
        "count": len(x),
        "seconds": seconds,
        "images_per_s": len(x) / seconds,
        "cpu_ms_per_image": cpu / len(x) * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="2000,20000")
    parser.add_argument(
        "--workers", type=int, default=None, help="decoding workers (default: validate's, min(4, CPUs))"
    )
    parser.add_argument(
        "--batch-size", type=int, default=BATCH, help="validate's --batch-size (the bare loop runs batches of 64)"
    )
    parser.add_argument("--bare", type=int, default=640, help="images the bare loop runs over, decoded first")
    parser.add_argument(
        "--model",
        choices=("small", "se_resnet18"),
        default="small",
        help="small: the SE classifier of the tests (about 40 M MACs); se_resnet18: an SE-ResNet-18 (about 1.8 G MACs)",
    )
    parser.add_argument(
        "--keep", default=None, help="folder for the generated images (default: a temporary one, removed)"
    )
    parser.add_argument(
        "--measure-bare", nargs=3, default=None, help=argparse.SUPPRESS
    )  # internal: reference, artifact, folder
    args = parser.parse_args()
    if args.measure_bare:
        print(json.dumps(bare_loop(*(Path(p) for p in args.measure_bare), args.bare)))
        return

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="edgepipe-validate-"))
    try:
        reference, artifact = export_models(root, args.model)
        results = []
        for count in (int(c) for c in args.counts.split(",")):
            folder = make_folder(root, count)
            result = validate_in_a_fresh_process(reference, artifact, folder, args.workers, args.batch_size)
            results.append(result)
            print(
                f"{count:>6} images: process tree peak PSS {gb(result['tree_peak_pss_bytes'])} (summed RSS {gb(result['tree_peak_rss_sum_bytes'])}), "
                f"main peak RSS {gb(result['main_peak_rss_bytes'])}; {result['images_per_s']:.1f} images/s through 2 runners "
                f"({result['seconds']:.0f} s, {result['wall_s']:.0f} s with start-up), {result['cpu_ms_per_image']:.1f} CPU ms/image; all as float32: {gb(count * 3 * 224 * 224 * 4)}",
                flush=True,
            )
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--measure-bare",
                str(reference),
                str(artifact),
                str(make_folder(root, int(args.counts.split(",")[0]))),
                "--bare",
                str(args.bare),
            ],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        )
        bare = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"bare ONNX Runtime loop, same 2 sessions, images decoded first: {bare['images_per_s']:.1f} images/s, {bare['cpu_ms_per_image']:.1f} CPU ms/image over {bare['count']} images"
        )
        first, last = results[0], results[-1]
        ratio = last["tree_peak_pss_bytes"] / first["tree_peak_pss_bytes"]
        throughput = [r["images_per_s"] / bare["images_per_s"] for r in results]
        print(
            f"peak PSS {last['count']} / {first['count']} images: {ratio:.3f} (target within 10%); "
            f"largest {gb(max(r['tree_peak_pss_bytes'] for r in results))} (target <= {gb(TARGET_BYTES)})"
        )
        cpu = [r["cpu_ms_per_image"] / bare["cpu_ms_per_image"] for r in results]
        print(
            f"validate / bare loop throughput: {', '.join(f'{t:.2f}x' for t in throughput)} (target >= 0.8x); "
            f"CPU per image: {', '.join(f'{c:.2f}x' for c in cpu)}"
        )
        print(f"model: {args.model}; machine: {machine()}; load average at the end {os.getloadavg()[0]:.1f}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
