"""What streaming fidelity costs next to inference, and that its memory stays flat.

Times ``Fidelity.update`` per batch for classifier logits (64 x 1000), sequence logits
(64 x 32 x 37) and a dense output (8 x 21 x 256 x 256), next to one ONNX Runtime CPU batch of a
small SE-ResNet-style classifier at 224x224 (tests/foreign_models.py), and the Python memory the
accumulator holds after 10 and after 200 batches.

    PYTHONPATH=. python benchmarks/fidelity.py
"""

from __future__ import annotations

import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from foreign_models import export_se_classifier, random_images  # noqa: E402

from pipeline.fidelity import Fidelity  # noqa: E402
from pipeline.onnxinfo import run_onnxruntime  # noqa: E402

SHAPES = {"logits 64x1000": (64, 1000), "sequence 64x32x37": (64, 32, 37), "dense 8x21x256x256": (8, 21, 256, 256)}


def _pair(rng, shape):
    reference = rng.standard_normal(shape).astype(np.float32) * 4
    return reference, (reference * (1 + rng.uniform(-1e-3, 1e-3, shape))).astype(np.float32)


def update_cost(shape, batches: int = 5) -> float:
    """Median milliseconds of one ``update`` for an output of ``shape``."""
    rng, fidelity, times = np.random.default_rng(0), Fidelity(["out"]), []
    for _ in range(batches):
        reference, candidate = _pair(rng, shape)
        started = time.perf_counter()
        fidelity.update([reference], [candidate])
        times.append(time.perf_counter() - started)
    return 1000 * float(np.median(times))


def held_memory(shape=(64, 1000)) -> tuple[int, int]:
    """Bytes traced after 10 and after 200 batches (the outputs themselves are freed each batch)."""
    rng, fidelity = np.random.default_rng(1), Fidelity(["out"])
    tracemalloc.start()
    for index in range(200):
        fidelity.update(*([a] for a in _pair(rng, shape)))
        if index == 9:
            after_ten = tracemalloc.get_traced_memory()[0]
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return after_ten, held


def onnxruntime_batch_ms(batch: int = 64) -> float:
    with tempfile.TemporaryDirectory() as folder:
        model = export_se_classifier(Path(folder) / "se.onnx")
        images = random_images((3, 224, 224), batch)
        run_onnxruntime(model, images)
        started = time.perf_counter()
        for _ in range(3):
            run_onnxruntime(model, images)  # includes session creation, as a one-shot check does
        return 1000 * (time.perf_counter() - started) / 3


def main() -> None:
    print(f"ONNX Runtime CPU, SE classifier 64x3x224x224: {onnxruntime_batch_ms():.0f} ms per batch")
    for label, shape in SHAPES.items():
        print(f"Fidelity.update, {label}: {update_cost(shape):.1f} ms per batch")
    ten, two_hundred = held_memory()
    print(
        f"Python memory held: {ten / 1024:.0f} KiB after 10 batches of 64x1000, {two_hundred / 1024:.0f} KiB after 200 "
        f"(the outputs compared: {200 * 2 * 64 * 1000 * 4 / 2**20:.0f} MiB)"
    )


if __name__ == "__main__":
    main()
