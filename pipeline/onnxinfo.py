"""What edgepipe needs to know about any ONNX model, including ones it did not export (no edgepipe
metadata, NHWC, dynamic height/width, several outputs, old opsets): read from the graph alone."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from pipeline.defaults import ORT_DISABLED_OPTIMIZERS
from pipeline.errors import EdgepipeError
from pipeline.onnxfile import load_onnx

MIN_QDQ_OPSET = 13  # QuantizeLinear/DequantizeLinear with a per-channel axis: what TensorRT parses for INT8
DEFAULT_TARGET_OPSET = 17
SYNTHETIC_COUNT = 32  # seeded synthetic inputs a model is checked on when no images are given
_AXES = {"nchw": (1, 2, 3), "nhwc": (3, 1, 2)}  # channel, height, width axis of each layout
_WORDS = ("channels", "height", "width")

ModelSource = str | Path | bytes | onnx.ModelProto


@dataclass(frozen=True)
class TensorInfo:
    """One graph input or output: name, shape (ints; symbolic names, or "?", for dynamic dims), dtype."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str  # numpy's name: "float32", "float16", "uint8", ...

    @property
    def rank(self) -> int:
        return len(self.shape)

    def text(self) -> str:
        return f"{self.dtype} [{', '.join(str(d) for d in self.shape)}]"


@dataclass(frozen=True)
class ModelInfo:
    """A model's single image input, its outputs, opset and origin; ``channels``, ``height``, ``width``
    and ``batch`` are None where the dimension is dynamic."""

    input: TensorInfo
    layout: str  # "nchw" | "nhwc"
    outputs: tuple[TensorInfo, ...]
    opset: int
    producer: str
    tied_dims: dict[str, tuple[int, ...]] = field(default_factory=dict)  # symbolic name -> input axes sharing it
    channels: int | None = field(init=False)
    height: int | None = field(init=False)
    width: int | None = field(init=False)
    batch: int | None = field(init=False)

    def __post_init__(self):
        for name, axis in zip(("batch", *_WORDS), (0, *_AXES[self.layout])):
            dim = self.input.shape[axis]
            object.__setattr__(self, name, dim if isinstance(dim, int) and dim > 0 else None)

    @property
    def input_name(self) -> str:
        return self.input.name

    @property
    def output_names(self) -> list[str]:
        return [output.name for output in self.outputs]

    @property
    def channel_axis(self) -> int:
        return _AXES[self.layout][0]

    @property
    def hw_axes(self) -> tuple[int, int]:
        return _AXES[self.layout][1], _AXES[self.layout][2]

    @property
    def dynamic_hw(self) -> bool:
        return self.height is None or self.width is None

    @property
    def needs_opset_upgrade(self) -> bool:
        return self.opset < MIN_QDQ_OPSET

    def notes(self) -> list[str]:
        notes = [
            f"input '{self.input_name}' names its {' and '.join(self.axis_word(a) for a in axes)} '{symbol}': TensorRT requires them equal in every shape"
            for symbol, axes in self.tied_dims.items()
        ]
        if self.needs_opset_upgrade:
            notes.append(
                f"opset {self.opset} is older than the {MIN_QDQ_OPSET} INT8 (Q/DQ) needs: it is upgraded to {DEFAULT_TARGET_OPSET} and proven unchanged"
            )
        return notes

    def sample_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, ...]:
        """One sample's shape in the model's layout (C,H,W or H,W,C); ``height``/``width`` fill dynamic H/W."""
        height, width = self.height or height, self.width or width
        if height is None or width is None or self.channels is None:
            raise EdgepipeError(
                f"input '{self.input_name}' has shape {self.input.text()} with dynamic height/width and no size was given",
                fix=f"pass the size to use, e.g. --optShapes {self.input_name}:{_example(self)}",
            )
        return (self.channels, height, width) if self.layout == "nchw" else (height, width, self.channels)

    def axis_word(self, axis: int) -> str:
        return dict(zip((0, *_AXES[self.layout]), ("batch", *_WORDS)))[axis]

    def axis_label(self, axis: int) -> str:
        return f"{self.axis_word(axis)} (axis {axis})"


def load_model(source: ModelSource) -> onnx.ModelProto:
    if isinstance(source, onnx.ModelProto):
        return source
    if isinstance(source, (bytes, bytearray)):
        return onnx.load_from_string(bytes(source))
    return load_onnx(source)


def describe(model: ModelSource, layout: str | None = None) -> ModelInfo:
    """Everything edgepipe needs from any single-image-input ONNX model. ``layout``: "nchw" or "nhwc"
    when the user knows it; else guessed from where the 1- or 3-wide channel dimension sits."""
    model = load_model(model)
    inputs = graph_inputs(model)
    if len(inputs) != 1:
        listed = " and ".join(f"'{i.name}' ({i.text()})" for i in inputs) or "none"
        raise EdgepipeError(
            f"the model has {len(inputs)} inputs: {listed}; edgepipe takes models with a single image input",
            fix="export the model with the image as its only input (fold the other inputs into constants, e.g. by exporting a wrapper module that supplies them)",
        )
    image = inputs[0]
    if image.rank != 4:
        raise EdgepipeError(
            f"input '{image.name}' has shape {image.text()}; edgepipe takes a 4-D image input (N,C,H,W or N,H,W,C)",
            fix="export the model with a batched image input",
        )
    symbols = [dim for dim in image.shape if isinstance(dim, str) and dim != "?"]
    tied = {s: tuple(a for a, dim in enumerate(image.shape) if dim == s) for s in symbols if symbols.count(s) > 1}
    return ModelInfo(
        input=image,
        layout=_layout(image, layout),
        outputs=tuple(_outputs(model)),
        opset=opset_of(model),
        producer=f"{model.producer_name} {model.producer_version}".strip() or "unknown",
        tied_dims=tied,
    )


def graph_inputs(model: onnx.ModelProto) -> list[TensorInfo]:
    """The graph's real inputs (not the initializers some exporters also list as inputs)."""
    initializers = {init.name for init in model.graph.initializer}
    return [_tensor_info(v) for v in model.graph.input if v.name not in initializers]


def onnx_inputs(model: onnx.ModelProto) -> list[tuple[str, tuple[int, ...]]]:
    """Name and shape (-1 for a dynamic dimension) of each real input, as TensorRT's profiles take them."""
    return [(t.name, tuple(d if isinstance(d, int) and d > 0 else -1 for d in t.shape)) for t in graph_inputs(model)]


def check_input_shape(info: ModelInfo, shape: tuple[int, ...], option: str = "--optShapes") -> None:
    """A concrete input shape the model can take (its rank, its static dims, tied dims equal); ``option`` names its flag."""
    name, example = info.input_name, f"{info.input_name}:{_example(info)}"
    if len(shape) != info.input.rank:
        raise EdgepipeError(
            f"{option} gives input '{name}' {len(shape)} dimensions; the model's is {info.input.text()}",
            fix=f"pass {option} {example}",
        )
    for axis, (dim, given) in enumerate(zip(info.input.shape, shape)):
        if isinstance(dim, int) and dim > 0 and dim != given:
            raise EdgepipeError(
                f"{option} gives input '{name}' {info.axis_label(axis)} {given}; the model fixes it at {dim} ({info.input.text()})",
                fix=f"pass {dim} there, e.g. {option} {example}",
            )
    for symbol, axes in info.tied_dims.items():
        if len({shape[a] for a in axes}) > 1:
            given = " and ".join(f"{info.axis_label(a)} {shape[a]}" for a in axes)
            words = [info.axis_word(a) for a in axes]
            distinct = ", ".join(f"{a}: '{word}'" for a, word in zip(axes, words))
            raise EdgepipeError(
                f"{option} gives input '{name}' {given}, but the model names these dimensions with one symbol '{symbol}', so TensorRT requires them equal",
                fix=(
                    f"pass equal {' and '.join(words)} in --minShapes/--optShapes/--maxShapes (e.g. {example}), or re-export the model "
                    f"with a distinct name per dimension (torch.onnx.export dynamic_axes={{'{name}': {{{distinct}}}}})"
                ),
            )


def check_profile_shapes(info: ModelInfo, profiles: dict[str, dict[str, tuple[int, ...]]]) -> None:
    """``{"--minShapes": {input name: shape}, ...}``: each names the model's input and fits it."""
    for option, shapes in profiles.items():
        for name, shape in shapes.items():
            if name != info.input_name:
                raise EdgepipeError(
                    f"{option} names input '{name}', which the model does not have (its input is '{info.input_name}')",
                    fix=f"pass {option} {info.input_name}:{_example(info)}",
                )
            check_input_shape(info, tuple(shape), option)


def synthetic_batch(
    info: ModelInfo, batch: int = 2, height: int | None = None, width: int | None = None, seed: int = 0
) -> np.ndarray:
    values = np.random.default_rng(seed).standard_normal((info.batch or batch, *info.sample_shape(height, width)))
    if np.issubdtype(np.dtype(info.input.dtype), np.integer):
        values = np.clip(values * 64 + 128, 0, 255)  # raw 8-bit pixels
    return values.astype(info.input.dtype)


def opset_of(model: onnx.ModelProto) -> int:  # the default domain's (ai.onnx)
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 0)


def cpu_session(model: bytes | str, every_tensor: bool = False, cuda: bool = False):
    """An ONNX Runtime CPU session that reads a Q/DQ graph as TensorRT computes it: ``ORT_DISABLED_OPTIMIZERS``
    are off (their rewrite of a quantized Conv's bias overflows FP16 scales); ``every_tensor`` turns every
    optimization off, so each tensor a model exposes is computed as written; ``cuda`` puts ONNX Runtime's CUDA
    provider first, where it has one."""
    import onnxruntime as ort  # a second to import: only what runs a model pays for it

    providers = ["CPUExecutionProvider"]
    if cuda and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if every_tensor:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model, options, providers=providers, disabled_optimizers=list(ORT_DISABLED_OPTIMIZERS))


def run_onnxruntime(model: ModelSource, inputs: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output of ``model`` on ONNX Runtime CPU, by name; ``inputs`` is an array for a single input."""
    try:
        session = cpu_session(load_model(model).SerializeToString())
        feeds = {session.get_inputs()[0].name: inputs} if isinstance(inputs, np.ndarray) else inputs
        values = session.run(None, feeds)
    except Exception as exc:  # ORT raises its own types for invalid graphs and bad feeds
        raise EdgepipeError(
            f"ONNX Runtime cannot run the model: {str(exc).strip().splitlines()[0][:200]}",
            fix="check the model with onnx.checker and the input's shape and dtype",
        )
    return {output.name: value for output, value in zip(session.get_outputs(), values)}


def _tensor_info(value: onnx.ValueInfoProto) -> TensorInfo:
    tensor = value.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim)
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
    except (KeyError, TypeError, ValueError):  # undefined or non-numpy types (e.g. sequences)
        dtype = "unknown"
    return TensorInfo(value.name, dims, dtype)


def _outputs(model: onnx.ModelProto) -> list[TensorInfo]:
    """The graph outputs; their shapes from shape inference where the exporter left them out."""
    outputs = list(model.graph.output)
    if any(not o.type.tensor_type.HasField("shape") for o in outputs):
        try:
            inferred = {o.name: o for o in onnx.shape_inference.infer_shapes(model).graph.output}
            outputs = [inferred.get(o.name, o) for o in outputs]
        except Exception:  # inference fails on some custom ops: keep the shapes as written
            pass
    return [_tensor_info(o) for o in outputs]


def _layout(image: TensorInfo, layout: str | None) -> str:
    if layout is not None:
        if layout not in _AXES:
            raise EdgepipeError(f"unknown layout {layout!r}", fix="pass --layout nchw or --layout nhwc")
        return layout
    for channels in (3, 1):  # colour first: 1x1x224x3 is NHWC RGB, not a 1-channel NCHW image
        if image.shape[1] == channels:
            return "nchw"
        if image.shape[3] == channels:
            return "nhwc"
    raise EdgepipeError(
        f"cannot tell whether input '{image.name}' ({image.text()}) is NCHW or NHWC: neither axis 1 nor axis 3 is a 1- or 3-channel dimension",
        fix="pass --layout nchw or --layout nhwc",
    )


def _example(info: ModelInfo) -> str:
    """The input's shape with batch 1 and 224 for dynamic H/W, in trtexec's NxCxHxW syntax."""
    dims = [1 if axis == 0 else (d if isinstance(d, int) and d > 0 else 224) for axis, d in enumerate(info.input.shape)]
    return "x".join(str(d) for d in dims)
