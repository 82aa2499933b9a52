"""Peak memory and throughput of streaming a folder of images through edgepipe's loader.

Writes 224x224 noise JPEGs into a temporary ImageFolder (2,000 and 20,000 by default), streams
each set through ``ImageSource.batches`` with timm-style preprocessing (resize 256, centre crop
224, ImageNet mean/std) into a stand-in consumer that keeps only the argmax per image, and
measures, in a fresh process per set:

- peak RSS of the main process (getrusage) and of the largest worker,
- peak PSS of the whole process tree (main + workers, sampled every 50 ms; PSS counts pages
  the forked workers share with the main process once, so it is what the machine really spends),
- images per second, against decoding and preprocessing the same images in a bare loop.

All 20,000 images as float32 would take 12 GB; streamed, memory should not grow with the count.

    python benchmarks/data_memory.py                      # 2,000 and 20,000
    python benchmarks/data_memory.py --counts 500,5000 --workers 4 --keep /tmp/imgs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

PREPROCESS = {"resize": 256, "crop": 224, "mean": "0.485,0.456,0.406", "std": "0.229,0.224,0.225"}
DISTINCT = 500  # distinct noise images, written in turn (decoding cost is the same as all-distinct)
CLASSES = 10


def make_folder(root: Path, count: int) -> Path:
    """An ImageFolder of ``count`` 224x224 noise JPEGs in 10 classes (reused when already there)."""
    import io

    from PIL import Image

    folder = root / f"images_{count}"
    if folder.is_dir() and sum(1 for _ in folder.rglob("*.jpg")) == count:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(0)
    encoded = []
    for _ in range(min(DISTINCT, count)):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(buffer, format="JPEG", quality=90)
        encoded.append(buffer.getvalue())
    for c in range(CLASSES):
        (folder / f"class_{c}").mkdir(parents=True)
    for i in range(count):
        (folder / f"class_{i % CLASSES}" / f"img_{i:06d}.jpg").write_bytes(encoded[i % len(encoded)])
    return folder


class TreeSampler:
    """Samples the PSS and RSS of a process and all its descendants in a thread; keeps the peaks."""

    def __init__(self, pid: int, interval_s: float = 0.1):
        import psutil

        self.root, self.interval_s = psutil.Process(pid), interval_s
        self.peak_pss = self.peak_rss_sum = self.peak_main_rss = 0
        self.cpu_seconds = 0.0  # the sampler's own CPU time, which a measurement of this process takes off
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            pss = rss = 0
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except Exception:  # the process tree is gone
                break
            for proc in processes:
                try:
                    memory = proc.memory_full_info()
                except Exception:  # a worker that just exited
                    continue
                pss, rss = pss + memory.pss, rss + memory.rss
                if proc.pid == self.root.pid:
                    self.peak_main_rss = max(self.peak_main_rss, memory.rss)
            self.peak_pss, self.peak_rss_sum = max(self.peak_pss, pss), max(self.peak_rss_sum, rss)
            self.cpu_seconds = time.thread_time()
            time.sleep(self.interval_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def measure(folder: Path, workers: int | None, batch_size: int) -> dict:
    """Run in a fresh process: stream ``folder`` once, keep the argmax per image, report memory and time."""
    import torch.utils.data  # noqa: F401  imported before timing: a validate process has torch loaded already

    from pipeline import images
    from pipeline.preprocess import Preprocess

    preprocess = Preprocess.from_dict(PREPROCESS)
    source = images.open_source(str(folder))
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    predictions = []
    with TreeSampler(os.getpid(), interval_s=0.05) as memory:
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        stream = source.batches(preprocess, batch_size=batch_size, workers=workers)
        for x, _ in stream:
            predictions.append(x.reshape(len(x), x.shape[1], -1).mean(axis=2).argmax(axis=1))  # stand-in model
        seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start  # workers are joined: counted
    cpu -= memory.cpu_seconds
    assert sum(len(p) for p in predictions) == len(source)
    return {
        "count": len(source),
        "workers": stream.workers,
        "seconds": seconds,
        "images_per_s": len(source) / seconds,
        "cpu_ms_per_image": cpu / len(source) * 1e3,
        "rss_before_bytes": base_rss,
        "main_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "worker_peak_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
        "tree_peak_pss_bytes": memory.peak_pss,
    }


def bare_loop(folder: Path, limit: int) -> dict:
    """Decode and preprocess ``limit`` of the images one by one in this process, no loader."""
    from PIL import Image

    from pipeline.preprocess import Preprocess

    preprocess = Preprocess.from_dict(PREPROCESS)
    files = sorted(folder.rglob("*.jpg"))[:limit]
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    for path in files:
        with Image.open(path) as image:
            preprocess.apply(image).reshape(3, -1).mean(axis=1).argmax()
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    return {
        "count": len(files),
        "seconds": seconds,
        "images_per_s": len(files) / seconds,
        "cpu_ms_per_image": cpu / len(files) * 1e3,
    }


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the loader's workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def in_fresh_process(*args: str) -> dict:
    env = dict(
        os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    done = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine() -> str:
    import psutil

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return f"{cpu}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, Python {platform.python_version()}"


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="2000,20000")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: min(4, CPUs))")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--bare", type=int, default=1000, help="images decoded in the bare loop")
    parser.add_argument(
        "--keep", default=None, help="folder for the generated images (default: a temporary one, removed)"
    )
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # internal: one measurement
    parser.add_argument("--measure-bare", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure), args.workers, args.batch_size)))
        return
    if args.measure_bare:
        print(json.dumps(bare_loop(Path(args.measure_bare), args.bare)))
        return

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="edgepipe-data-"))
    try:
        results = []
        for count in (int(c) for c in args.counts.split(",")):
            folder = make_folder(root, count)
            extra = ["--workers", str(args.workers)] if args.workers is not None else []
            result = in_fresh_process("--measure", str(folder), "--batch-size", str(args.batch_size), *extra)
            results.append(result)
            print(
                f"{count:>6} images: main peak RSS {gb(result['main_peak_rss_bytes'])} (after imports {gb(result['rss_before_bytes'])}), "
                f"largest worker {gb(result['worker_peak_rss_bytes'])}, process tree peak PSS {gb(result['tree_peak_pss_bytes'])}; "
                f"{result['images_per_s']:.0f} images/s with {result['workers']} workers, {result['cpu_ms_per_image']:.2f} CPU ms/image; "
                f"all as float32: {gb(count * 3 * 224 * 224 * 4)}"
            )
        bare = in_fresh_process(
            "--measure-bare", str(make_folder(root, int(args.counts.split(",")[0]))), "--bare", str(args.bare)
        )
        print(
            f"bare loop (1 process, no loader): {bare['images_per_s']:.0f} images/s, {bare['cpu_ms_per_image']:.2f} CPU ms/image over {bare['count']} images"
        )
        first, last = results[0], results[-1]
        print(
            f"peak PSS {last['count']} / {first['count']} images: {last['tree_peak_pss_bytes'] / first['tree_peak_pss_bytes']:.3f}; "
            f"main RSS: {last['main_peak_rss_bytes'] / first['main_peak_rss_bytes']:.3f}"
        )
        print(
            f"loader / bare loop: throughput {last['images_per_s'] / bare['images_per_s']:.2f}x, CPU per image {last['cpu_ms_per_image'] / bare['cpu_ms_per_image']:.2f}x"
        )
        print(f"machine: {machine()}; load average at the end {os.getloadavg()[0]:.1f}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
