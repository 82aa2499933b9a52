"""The precision of a model or engine: one type, parsed once at the edge, read from a graph once.

Nothing else guesses a precision, least of all from a file name.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum
from typing import Any

from pipeline.errors import EdgepipeError

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


class Precision(str, Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"

    def __str__(self) -> str:  # "fp16", and so in f-strings and format() too
        return self.value

    @property
    def label(self) -> str:
        """ "FP16", as messages write it."""
        return self.value.upper()


ALL = tuple(Precision)
NAMES = tuple(p.value for p in Precision)


def parse(text: Any, option: str = "--precision") -> Precision:
    """``Precision`` from "fp16", "FP16" or a Precision; one clear error otherwise."""
    value = str(text).strip().lower()  # a Precision's str is its value
    try:
        return Precision(value)
    except ValueError:
        raise EdgepipeError(f"{option} {text!r} is not a precision", fix=f"use one of {', '.join(NAMES)}") from None


def parse_list(text: str | Iterable[Any], option: str = "--precisions") -> tuple[Precision, ...]:
    """ "fp32,fp16" -> (FP32, FP16) in the order given, without repeats; at least one."""
    items = text.split(",") if isinstance(text, str) else list(text)
    values = tuple(dict.fromkeys(parse(item, option) for item in items if str(item).strip()))
    if not values:
        raise EdgepipeError(f"{option} names no precision", fix=f"pass some of {','.join(NAMES)}")
    return values


def is_quantized(model: Any) -> bool:
    """True when the ONNX graph holds Q/DQ nodes (an INT8 or otherwise quantized model)."""
    return any(node.op_type in QDQ_OPS for node in model.graph.node)


def of_onnx(model: Any) -> Precision:
    """INT8 for a Q/DQ graph, FP16 when it holds float16 tensors, else FP32."""
    import onnx  # only callers that hold an ONNX model get here

    if is_quantized(model):
        return Precision.INT8
    graph = model.graph
    types = [init.data_type for init in graph.initializer]
    types += [v.type.tensor_type.elem_type for v in (*graph.input, *graph.output, *graph.value_info)]
    for node in graph.node:  # the type a Cast makes, and the type of a Constant's value
        types += [a.i for a in node.attribute if node.op_type == "Cast" and a.name == "to"]
        types += [a.t.data_type for a in node.attribute if node.op_type == "Constant" and a.name == "value"]
    return Precision.FP16 if onnx.TensorProto.FLOAT16 in types else Precision.FP32
