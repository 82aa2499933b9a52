"""The runner contract: one interface (feed a batch, get the outputs) over every runtime.

Like Polygraphy's runners, each wraps one runtime and is a context manager, so whatever it holds (GPU
buffers, CUDA contexts, sessions) is always released: ``with open_runner(artifact) as runner: ...``.
``infer_all`` checks the batch (type, shape, batch size: a clear error naming expected and got) and
calls the runtime's ``infer_impl``; ``infer`` gives the first output (a classifier's logits).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.errors import EdgepipeError


class NoGpuError(EdgepipeError):
    """Running this artifact needs an NVIDIA GPU and there is none: a skip, not a failure."""


class Runner:
    name = "runner"  # runtime and device, e.g. "pytorch-cpu", "onnxruntime-cpu", "tensorrt-rtx-1.7"
    batch_size: int | None = None  # fixed batch the artifact takes; None when dynamic
    min_batch: int = 1  # smallest batch accepted (a TensorRT profile's min)
    max_batch: int | None = None  # largest batch accepted (a TensorRT profile's max); None: no limit
    input_shape: tuple[int, ...] | None = None  # one sample's shape (C, H, W) when known

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """The first output (a classifier's logits) for one batch, as float32."""
        return self.infer_all(batch)[0]

    def infer_all(self, batch: np.ndarray) -> list[np.ndarray]:
        """Every output of the model for one batch, as float32 arrays."""
        return self.infer_impl(self.check_input(batch))

    def infer_impl(self, batch: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def last_timing(self) -> dict[str, float] | None:
        """H2D, GPU compute and D2H times (ms) of the last ``infer``, where the runtime has them."""
        return None

    def device_memory_bytes(self) -> int | None:
        """Device memory the model needs besides its weights (TensorRT's activation memory)."""
        return None

    def close(self) -> None:
        """Free what the runner holds (GPU buffers, contexts); a no-op for most runners."""

    def check_input(self, batch: Any) -> np.ndarray:
        """``batch`` if it is a float32 array this runner accepts, else one error naming expected vs got."""
        fixed, least, most = self.batch_size, self.min_batch, self.max_batch
        if not isinstance(batch, np.ndarray):
            raise EdgepipeError(
                f"{self.name} takes a numpy array; got {type(batch).__name__}",
                fix="pass np.asarray(batch, dtype=np.float32)",
            )
        if batch.dtype != np.float32:
            raise EdgepipeError(
                f"{self.name} takes float32 input; got {batch.dtype}",
                fix="convert the batch with batch.astype(np.float32) after the model's normalization",
            )
        expected = ("N", *self.input_shape) if self.input_shape else ("N", "C", "H", "W")
        if batch.ndim != len(expected) or (self.input_shape and tuple(batch.shape[1:]) != tuple(self.input_shape)):
            raise EdgepipeError(
                f"{self.name} takes input of shape {_shape_text(expected)}; got {_shape_text(batch.shape)}",
                fix="resize the images to the model's input size (its recorded preprocessing) and keep the model's layout",
            )
        n = batch.shape[0]
        if fixed and n != fixed:
            raise EdgepipeError(
                f"{self.name} takes a fixed batch of {fixed}; got {n}",
                fix="feed it through pipeline.runtime.predict (which pads the last batch), or export with --dynamic-batch",
            )
        if n < least or (most is not None and n > most):
            raise EdgepipeError(
                f"batch {n} is outside what {self.name} allows (its optimization profile takes {least} to {most})",
                fix=f"use a batch from {least} to {most}, or rebuild the engine with --maxShapes input:{n}x...",
            )
        return batch


class SessionRunner(Runner):
    """A runner over an ONNX session (ONNX Runtime's, or onnx's reference evaluator): one image input."""

    session: Any = None
    input_dtype: Any = np.float32  # the graph's input type: an FP16 graph's float32 batch is converted

    def take_input(self, names: list[str], shape: Sequence[Any]) -> None:
        """The model's one input: its name, and its fixed batch and sample shape (None where dynamic)."""
        if len(names) != 1:
            raise EdgepipeError(
                f"the model has {len(names)} inputs ({', '.join(names)}); edgepipe runs models with one image input",
                fix="export a model with a single image input",
            )
        static = [d if isinstance(d, int) and d > 0 else None for d in shape]
        self.input_name = names[0]
        self.batch_size = static[0] if static else None
        self.input_shape = tuple(static[1:]) if all(static[1:]) else None

    def infer_impl(self, batch: np.ndarray) -> list[np.ndarray]:
        outputs = self.session.run(None, {self.input_name: batch.astype(self.input_dtype, copy=False)})
        return [np.asarray(o).astype(np.float32, copy=False) for o in outputs]

    def close(self) -> None:
        self.session = None


def _shape_text(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def batch_step(runner: Runner, batch_size: int = 64) -> int:
    """The batch ``predict`` feeds: the runner's fixed batch, else ``batch_size`` within its profile."""
    return runner.batch_size or min(batch_size, runner.max_batch or batch_size)


def predict_batch(runner: Runner, batch: np.ndarray, outputs: str = "first") -> Any:
    """One batch through ``runner``, padded to a fixed batch size and cut back; "first" or "all" outputs."""
    real = len(batch)
    if runner.batch_size and real < runner.batch_size:
        batch = np.concatenate([batch, np.repeat(batch[-1:], runner.batch_size - real, axis=0)])
    results = [o[:real] for o in runner.infer_all(np.ascontiguousarray(batch))]
    return results[0] if outputs == "first" else results


def predict(runner: Runner, images: np.ndarray, batch_size: int = 64, outputs: str = "first") -> Any:
    """The first output (a classifier's logits), or "all" outputs, for all ``images``, in batches the runner takes."""
    step = batch_step(runner, batch_size)
    parts = [predict_batch(runner, images[start : start + step], outputs) for start in range(0, len(images), step)]
    if outputs == "first":
        return np.concatenate(parts)
    return parts[0] if len(parts) == 1 else [np.concatenate([part[i] for part in parts]) for i in range(len(parts[0]))]
