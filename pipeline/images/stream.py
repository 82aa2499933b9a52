"""Preprocessed images in batches, decoded by parallel workers, never the whole set in memory.
Torch DataLoader workers each decode, resize and crop a whole batch into one uint8 array (a quarter
of float32's bytes, in shared memory); the main process scales it while the next batches are
decoded, at most ``workers x 2`` in flight. A file that does not decode is reported by name when its
batch is reached; workers return the failure as a value, because an exception raised inside a worker
would reach the user wrapped in a worker traceback.
"""

from __future__ import annotations

import ctypes
import gc
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from pipeline.defaults import DEFAULT_BATCH_SIZE
from pipeline.errors import EdgepipeError
from pipeline.preprocess import Preprocess, dims
from pipeline.progress import progress_bar

_PREFETCH = 2  # batches decoded ahead per worker: bounds memory at workers x 2 batches
READABLE = "PNG, JPEG, BMP, GIF, TIFF, WebP and PGM/PPM"
Progress = Callable[[int, int], None]  # called with (images done, images in all) after each batch


def default_workers(beside_model: bool = False) -> int:
    """Decoding processes: min(4, CPUs); none ``beside_model`` on 2 CPUs or fewer, where ONNX Runtime keeps
    every core busy and workers only take CPU from it (measured in docs/data.md)."""
    cpus = os.cpu_count() or 1
    return 0 if beside_model and cpus <= 2 else min(4, cpus)


@dataclass
class _Failure:  # what went wrong with one image, carried back from a worker as a value
    message: str
    fix: str


@dataclass
class _BatchDecoder:
    """DataLoader dataset whose item ``b`` is the whole preprocessed batch ``b`` (x, y or None)."""

    source: Any  # an ImageSource (source.py, which stands on this module)
    preprocess: Preprocess
    index_batches: list[np.ndarray]
    as_tensors: bool
    _tensor: Any = None  # the batch being filled, when sent as a shared-memory tensor

    def __len__(self) -> int:
        return len(self.index_batches)

    def __getitem__(self, b: int):
        indices = self.index_batches[b]
        out, first = None, None
        for k, index in enumerate(indices):
            name = self.source.name_of(index)
            try:
                image = self.source.read(index)
            except Exception as exc:  # any decoder failure is a property of this one file
                return _Failure(
                    f"{name} is not a readable image ({_reason(exc, name)})",
                    f"remove or replace it; edgepipe reads {READABLE} files",
                )
            # decoded images stay uint8 here and are scaled per batch in the main process
            arrange = self.preprocess.arrange if isinstance(image, Image.Image) else self.preprocess.apply_array
            try:
                array = image if getattr(self.source, "preprocessed", False) else arrange(image)
            except ValueError as exc:
                return _Failure(
                    f"{name} cannot be preprocessed: {exc}",
                    "pass a --resize at least as large as --crop, or remove the image",
                )
            if array.dtype != np.uint8 and not np.isfinite(array).all():
                return _Failure(f"{name} holds NaN or Inf values", "clean the data")
            if out is None:
                out, first = self._allocate((len(indices), *array.shape), array.dtype), name
            elif array.shape != out.shape[1:]:
                return _Failure(
                    f"{name} becomes a {dims(array.shape)} input but {first} a {dims(out.shape[1:])} one; images of different sizes cannot share a batch",
                    "pass --resize HxW, or --resize N with --crop N, so that every image has the model's input size",
                )
            out[k] = array
        labels = self.source.labels[indices] if self.source.labels is not None else None
        return (self._tensor, labels) if self.as_tensors else (out, labels)

    def _allocate(self, shape, dtype) -> np.ndarray:
        """The batch's array; in shared memory when sent as a tensor, so torch hands it over without a copy."""
        if not self.as_tensors:
            return np.empty(shape, dtype=dtype)
        import torch

        self._tensor = torch.empty(shape, dtype=torch.uint8 if dtype == np.uint8 else torch.float32).share_memory_()
        return self._tensor.numpy()


def _init_worker(worker_id: int) -> None:
    """Keep the worker's heap from creeping up. In a forked worker every decoded image's fresh allocation
    fills free space in the inherited heap (copying those pages) and fragments it: ~60 MB per worker over
    the first ~20,000 images. Pillow's buffer reuse removes most of that churn; glibc's M_MMAP_THRESHOLD
    sends the rest to mappings that are returned whole when freed."""
    from PIL import Image

    set_blocks_max = getattr(Image.core, "set_blocks_max", None)
    if set_blocks_max is not None:
        set_blocks_max(32)  # image buffers Pillow keeps for reuse
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        pass


def _shared_memory_fits(in_flight_bytes: int) -> bool:
    """Whether /dev/shm can hold the batches in flight (Docker's default is only 64 MB); if not,
    batches travel through a pipe instead: slower, but it works everywhere."""
    try:
        stat = os.statvfs("/dev/shm")
    except OSError:
        return True  # no /dev/shm (macOS): torch shares memory by other means
    return stat.f_bavail * stat.f_frsize >= 2 * in_flight_bytes


def _start_workers(loader):
    """``iter(loader)``, which forks the workers, with the garbage collector's objects frozen: a full garbage
    collection in a worker writes to every object it inherited (60 MB with torch loaded, more with a model
    runtime), and frozen, those pages stay shared instead of being copied into each worker."""
    if gc.get_freeze_count():  # the caller manages frozen objects itself
        return iter(loader)
    gc.freeze()
    try:
        return iter(loader)
    finally:
        gc.unfreeze()


def _identity(item):
    return item


class BatchStream:
    """An iterable of ``(x, y_or_None)``: x float32 (batch, C, H, W) or (batch, H, W, C), y int64, following
    ``indices`` in order; each iteration is a fresh pass with fresh workers. ``progress``: True or a
    description for a rich bar with ETA on stderr, or a callable hook."""

    def __init__(
        self,
        source: Any,
        preprocess: Preprocess,
        indices=None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        workers: int | None = None,
        progress: bool | str | Progress | None = None,
    ):
        if batch_size < 1:
            raise EdgepipeError(f"batch size must be at least 1, got {batch_size}", fix="use a batch size of 1 or more")
        self.indices = np.arange(len(source)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.count = len(self.indices)
        if self.count and (self.indices.min() < 0 or self.indices.max() >= len(source)):
            raise EdgepipeError(
                f"image indices must lie in 0..{len(source) - 1}", fix="draw them from this source's split"
            )
        self.source, self.preprocess, self.batch_size, self.progress = source, preprocess, batch_size, progress
        self.workers = default_workers() if workers is None else workers
        if self.workers < 0:
            raise EdgepipeError(
                f"--workers must be 0 or more, got {workers}",
                fix="pass --workers 0 to decode in the main process, or a positive number",
            )

    def __len__(self) -> int:
        return -(-self.count // self.batch_size)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        from torch.utils.data import DataLoader  # torch only for passes over images, not at CLI start-up

        self.source.prepare(self.preprocess)
        index_batches = [
            self.indices[start : start + self.batch_size] for start in range(0, self.count, self.batch_size)
        ]
        workers = 0 if getattr(self.source, "in_memory", False) else min(self.workers, len(index_batches))
        height, width = self.preprocess.output_hw or (1024, 1024)  # unknown: assume large images
        batch_bytes = self.batch_size * self.preprocess.channels * height * width * 4
        as_tensors = workers > 0 and _shared_memory_fits(workers * _PREFETCH * batch_bytes)
        decoder = _BatchDecoder(self.source, self.preprocess, index_batches, as_tensors)
        loader = DataLoader(
            decoder,
            batch_size=None,
            shuffle=False,
            num_workers=workers,
            collate_fn=_identity,
            prefetch_factor=_PREFETCH if workers else None,
            worker_init_fn=_init_worker,
        )
        hook = self.progress if callable(self.progress) else None
        description = self.progress if isinstance(self.progress, str) else "images"
        with progress_bar(description, self.count, enabled=bool(self.progress) and hook is None) as bar:
            done = 0
            for item in _start_workers(loader):
                if isinstance(item, _Failure):
                    raise EdgepipeError(item.message, fix=item.fix)
                x, y = item
                x = x.numpy() if not isinstance(x, np.ndarray) else x
                x = self.preprocess.scale(x) if x.dtype == np.uint8 else x
                done += len(x)
                hook(done, self.count) if hook else bar.update(done)
                yield x, y

    def collect(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The whole stream as one (x, y): for small sets such as a calibration draw, not a dataset."""
        x_all, y_all, start = None, None, 0
        for x, y in self:
            if x_all is None:
                x_all = np.empty((self.count, *x.shape[1:]), dtype=np.float32)
                y_all = np.empty(self.count, dtype=np.int64) if y is not None else None
            x_all[start : start + len(x)] = x
            if y_all is not None:
                y_all[start : start + len(x)] = y
            start += len(x)
        if x_all is None:
            raise EdgepipeError("no images to read", fix="pass a non-empty selection of images")
        return x_all, y_all


def _reason(exc: Exception, name: str) -> str:
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
    text = text.replace(f" '{name}'", "").replace(name, "").strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
