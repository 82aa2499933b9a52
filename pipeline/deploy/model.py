"""What the device side needs to know about one ONNX model, read in one place.

``read_model`` is the only function of ``pipeline.deploy`` that reads a model's preprocessing and
class names; it stands on ``ModelInput.of_onnx``: the preprocessing (stored, else the default) and the
class names the model records (``Record``, the one reader of what edgepipe writes in a model).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import EdgepipeError
from pipeline.images import ModelInput, read_labels
from pipeline.onnxinfo import TensorInfo, load_model
from pipeline.precision import Precision
from pipeline.precision import of_onnx as precision_of
from pipeline.preprocess import Preprocess


@dataclass(frozen=True)
class DeployModel:
    """One ONNX model as the device sees it: its input, outputs, preprocessing, classes and precision."""

    path: Path
    preprocess: Preprocess
    class_names: tuple[str, ...] | None  # None when the model is not a classifier and no labels were given
    input: TensorInfo
    layout: str  # "nchw" | "nhwc"
    outputs: tuple[TensorInfo, ...]
    batch: int | None  # the static batch, or None when it is dynamic
    sample_shape: tuple[int, ...]  # one preprocessed image in the model's layout
    precision: Precision

    @property
    def input_name(self) -> str:
        return self.input.name

    @property
    def is_classifier(self) -> bool:
        first = self.outputs[0]
        return len(self.outputs) == 1 and first.rank == 2 and isinstance(first.shape[1], int) and first.shape[1] > 1

    @property
    def channels(self) -> int:
        return self.preprocess.channels


def read_model(onnx_path: str | Path, labels: str | Path | None = None) -> DeployModel:
    """Read ``onnx_path``: its preprocessing (stored, else the default) and class names (``labels`` first)."""
    proto = load_model(onnx_path)
    model_input = ModelInput.of_onnx(proto)
    info = model_input.info
    names = read_labels(labels) if labels is not None else model_input.record.class_names
    classes = model_input.num_classes
    if names is not None and classes is not None and len(names) != classes:
        raise EdgepipeError(
            f"{len(names)} class names for a model with {classes} outputs ({Path(onnx_path).name})",
            fix="pass --labels with one class name per line, in the model's output order",
        )
    return DeployModel(
        path=Path(onnx_path),
        preprocess=model_input.preprocess,
        class_names=tuple(names) if names else None,
        input=info.input,
        layout=info.layout,
        outputs=info.outputs,
        batch=info.batch,
        sample_shape=tuple(model_input.sample_shape),
        precision=precision_of(proto),
    )
