"""Flag text -> value, or one ``EdgepipeError`` naming the flag: the parsers the shared options use.

Each imports nothing heavy, so that ``--help`` starts at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import click

from pipeline.errors import EdgepipeError
from pipeline.inputsize import InputSize
from pipeline.precision import Precision, parse_list


def parse_batches(text: str, option: str = "--batch") -> tuple[int, ...]:
    """ "1,8,32" -> (1, 8, 32): at least one batch size, each 1 or more."""
    try:
        values = tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise EdgepipeError(
            f"{option} {text!r} is not a list of batch sizes",
            fix=f"pass sizes of 1 or more separated by commas, e.g. {option} 1,8,32",
        )
    return values


def parse_max_drop(text: str | float | None) -> float | None:
    """ "0.5" -> 0.5 top-1 points; "none" (or no value) -> None, plain PTQ without a budget."""
    if text is None or str(text).strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0 or math.isinf(value):
        raise EdgepipeError(
            f"--max-drop {text!r} is not a number of points",
            fix="pass e.g. --max-drop 0.5, or --max-drop none for plain PTQ",
        )
    return value


def parse_precisions(text: str, option: str = "--precisions") -> tuple[Precision, ...]:
    """ "fp32,int8" -> (FP32, INT8), in the order given, without repeats; at least one."""
    return parse_list(text, option)


def parse_input_size(text: str | None, option: str = "--input-size") -> InputSize | None:
    """ "3x96x96" -> InputSize(96, 96, channels=3); "96x96" -> InputSize(96, 96): the model's channels."""
    return None if text is None else InputSize.parse(text, option)


DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | None, option: str) -> float | None:
    """ "10m" -> 600.0 seconds ("90s", "1.5h"; a bare number is seconds); None stays None."""
    if text is None:
        return None
    word = str(text).strip().lower()
    unit = word[-1] if word[-1:] in DURATION_UNITS else "s"
    try:
        value = float(word.rstrip("smh")) * DURATION_UNITS[unit]
    except ValueError:
        value = math.nan
    if not value > 0 or math.isinf(value):
        raise EdgepipeError(f"{option} {text!r} is not a duration", fix=f"pass e.g. {option} 10m, 90s or 1h")
    return value


def callback(parser: Callable[..., Any], *args: Any) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A Click callback calling ``parser(value, *args)``."""
    return lambda ctx, param, value: parser(value, *args)


def onnx_input_hw(input_size: InputSize | None, onnx_model: str) -> tuple[int, int] | None:
    """``--input-size`` for an ONNX model: (height, width), its channels (if named) checked against the model's."""
    if input_size is None:
        return None
    if input_size.channels is not None and str(onnx_model).endswith(".onnx"):
        # onnxinfo reads the graph (onnx): imported only when channels are named, never at --help.
        from pipeline.onnxinfo import describe

        input_size.check_channels(describe(onnx_model).channels, onnx_model)
    return input_size.hw
