"""A Triton model repository for a bundle's engine: ``NAME/config.pbtxt`` and ``NAME/1/model.plan``.

Triton's TensorRT backend (``platform: "tensorrt_plan"``) takes dims without the batch when
``max_batch_size`` > 0, and refuses to load a model whose ``max_batch_size`` lies outside the
engine's optimization profile ("TensorRT engine only supports max-batch N"), so the config is
written from the same profile ``build.sh`` builds with. A model with a static batch gets
``max_batch_size: 0`` and its full shape. ``model.plan`` is the path the device's build writes.
"""

from __future__ import annotations

from pipeline.deploy.model import DeployModel
from pipeline.errors import EdgepipeError

# numpy dtype name -> Triton's DataType (model_config.proto)
DATA_TYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "int8": "TYPE_INT8",
    "uint8": "TYPE_UINT8",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "bool": "TYPE_BOOL",
}
PLAN = "model.plan"
LABELS = "labels.txt"


def check_max_batch(max_batch: int, profile_max: int) -> None:
    """Raise when Triton's ``max_batch_size`` would not fit the engine's profile."""
    if max_batch > profile_max:
        raise EdgepipeError(
            f"Triton max batch {max_batch} is above the engine's profile (batch 1 to {profile_max}); "
            f"Triton would refuse the model",
            fix=f"pass --triton-max-batch {profile_max} or less, or raise --max-batch to {max_batch}",
        )


def config_pbtxt(name: str, model: DeployModel, profile_max: int, max_batch: int | None = None) -> str:
    """``config.pbtxt`` for ``model``'s engine, whose profile takes batches 1..``profile_max``."""
    dynamic = model.batch is None
    max_batch = (max_batch or profile_max) if dynamic else 0
    if dynamic:
        check_max_batch(max_batch, profile_max)
    lines = [f'name: "{name}"', 'platform: "tensorrt_plan"', f"max_batch_size: {max_batch}"]
    input_dims = model.sample_shape if dynamic else (model.batch, *model.sample_shape)
    lines += _tensor("input", model.input.name, model.input.dtype, input_dims)
    for index, output in enumerate(model.outputs):
        dims = output.shape[1:] if dynamic else output.shape
        label = LABELS if index == 0 and model.is_classifier and model.class_names else None
        lines += _tensor("output", output.name, output.dtype, dims, label)
    if dynamic:
        preferred = sorted({b for b in (max_batch // 2, max_batch) if b > 1})
        lines += ["dynamic_batching {"]
        lines += [f"  preferred_batch_size: {b}" for b in preferred]
        lines += ["  max_queue_delay_microseconds: 100", "}"]
    lines += ["instance_group [ { count: 1, kind: KIND_GPU } ]"]
    return "\n".join(lines) + "\n"


def labels_text(model: DeployModel) -> str | None:
    """Triton's ``label_filename``: one class name a line, in output order."""
    return "\n".join(model.class_names) + "\n" if model.class_names else None


def _tensor(kind: str, name: str, dtype: str, dims, label: str | None = None) -> list[str]:
    if dtype not in DATA_TYPES:
        raise EdgepipeError(
            f"{kind} '{name}' has dtype {dtype}, which Triton's TensorRT backend does not take",
            fix="export the model with float32, float16 or integer inputs and outputs",
        )
    if any(not isinstance(d, int) or d <= 0 for d in dims):
        shown = ", ".join(str(d) for d in dims)
        raise EdgepipeError(
            f"{kind} '{name}' has dynamic dims [{shown}] beyond the batch",
            fix="export the model with a static output size (only the batch may be dynamic)",
        )
    body = [
        f'    name: "{name}"',
        f"    data_type: {DATA_TYPES[dtype]}",
        f"    dims: [ {', '.join(str(d) for d in dims)} ]",
    ]
    if label:
        body.append(f'    label_filename: "{label}"')
    return [f"{kind} [", "  {", *body, "  }", "]"]
