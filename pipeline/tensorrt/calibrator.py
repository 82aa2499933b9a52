"""The classic TensorRT INT8 entropy calibrator, for TensorRT <= 10.x with --legacy-precision.

TensorRT 10.1 deprecated implicit INT8 calibration and TensorRT 11 / TensorRT-RTX removed it;
it remains the only INT8 path for DLA on JetPack 5 and 6. The calibrator class derives from the
backend module's ``IInt8EntropyCalibrator2``. It takes float32 batches of any size (the build stage
reads the calibration set), so the TensorRT seam stands below ``calibration``; pycuda comes through
``pipeline.cuda`` only when a calibrator is made.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.artifacts import Kind, atomic_output, why_stale, write_manifest
from pipeline.cuda import autoinit
from pipeline.errors import EdgepipeError
from pipeline.onnxinfo import onnx_inputs

CALIBRATION_BATCH = 32


def fixed_batches(images: Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Contiguous float32 batches of exactly ``batch_size`` from batches of any size; the last is padded by repeating images."""
    pending: list[np.ndarray] = []
    count = 0
    for batch in images:
        pending.append(np.asarray(batch, dtype=np.float32))
        count += len(pending[-1])
        while count >= batch_size:
            joined = np.concatenate(pending)
            yield np.ascontiguousarray(joined[:batch_size])
            pending, count = [joined[batch_size:]], len(joined) - batch_size
    if count:
        joined = np.concatenate(pending)
        yield np.ascontiguousarray(np.resize(joined, (batch_size, *joined.shape[1:])))


def legacy_calibrator(
    be: Any, model: Any, profiles: dict, images: Iterable[np.ndarray], cache: Path, inputs: dict
) -> tuple[Any, dict]:
    """An entropy calibrator fed ``images`` (float32 batches of any size) and its fixed-shape calibration profile;
    ``cache`` is read while its manifest matches ``inputs`` and the shape, and written after calibration."""
    (name, shape), *others = onnx_inputs(model)
    if others:
        raise EdgepipeError(
            "legacy INT8 calibration handles models with one input",
            fix="drop --legacy-precision: explicit INT8 handles any number of inputs",
        )
    lo, _, hi = profiles.get(name, (shape, shape, shape))
    batch_size = min(max(CALIBRATION_BATCH, lo[0]), hi[0])
    calibration_shape = (batch_size, *shape[1:])
    params = {"shape": list(calibration_shape)}
    read_cache = why_stale(cache, Kind.CALIBRATION_CACHE, inputs, params) is None
    cuda = autoinit()
    trt = be.trt

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = fixed_batches(images, batch_size)
            self._device = None
            self.count = 0
            # TensorRT swallows exceptions raised in callbacks; the build re-raises this one.
            self.exception: BaseException | None = None

        def get_batch_size(self):
            return batch_size

        def get_batch(self, names):
            try:
                batch = next(self._batches, None)  # contiguous float32, exactly batch_size images
                if batch is None:
                    return None
                if tuple(batch.shape[1:]) != tuple(calibration_shape[1:]):
                    raise EdgepipeError(
                        f"the calibration images are {'x'.join(map(str, batch.shape[1:]))} but the model takes {'x'.join(map(str, calibration_shape[1:]))}",
                        fix="make a calibration set for this model ('edgepipe calibrate'), or drop --calib to draw one from its training data",
                    )
                if self._device is None:
                    self._device = cuda.mem_alloc(batch.nbytes)
                cuda.memcpy_htod(self._device, batch)
                self.count += len(batch)
                return [int(self._device)] * len(names)
            except BaseException as exc:  # noqa: BLE001 - re-raised by the build
                self.exception = exc
                return None

        def read_calibration_cache(self):
            return cache.read_bytes() if read_cache and cache.is_file() else None

        def write_calibration_cache(self, data):
            with atomic_output(cache) as tmp:
                tmp.write_bytes(bytes(data))
            write_manifest(cache, Kind.CALIBRATION_CACHE, inputs=inputs, params=params)

    return EntropyCalibrator(), {name: calibration_shape}
