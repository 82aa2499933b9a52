"""The user's words for preprocessing, parsed: flag values and --preprocess YAML/JSON files.

Flags and files share one vocabulary (timm's and torchvision's), parsed here once, so a typo or a
wrong number is one clear line naming the key, never a failure deep inside a later stage.
"""

from __future__ import annotations

import difflib
from typing import Any

import numpy as np

from pipeline.errors import EdgepipeError

INTERPOLATION_NAMES = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
CHANNEL_ORDERS = ("rgb", "bgr")
LAYOUTS = ("nchw", "nhwc")
KEYS = ("resize", "crop", "mean", "std", "channel_order", "interpolation", "layout", "channels")
EXAMPLE = {"mean": "0.485,0.456,0.406", "std": "0.229,0.224,0.225"}


def parse_value(key: str, value: Any):
    """``value`` of preprocessing ``key`` (flag text, or what YAML/JSON gave) in its stored type."""
    return _PARSERS[key](key, value)


def check_keys(values: dict[str, Any], where: str) -> None:
    unknown = [key for key in values if key not in KEYS]
    if unknown:
        hints = [
            f"{key} -> {close[0]}"
            for key in unknown
            if (close := difflib.get_close_matches(key, KEYS, n=1, cutoff=0.6))
        ]
        hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
        raise EdgepipeError(
            f"{where} has unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}{hint}",
            fix=f"use only {', '.join(KEYS[:-1])}",
        )


def choice(key: str, value: str, allowed) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(str(value), list(allowed), n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise EdgepipeError(f"unknown {key} '{value}'{hint}", fix=f"use one of {', '.join(allowed)}")


def dims(shape) -> str:
    """(224, 160) -> "224x160"."""
    return "x".join(str(d) for d in shape)


def _parse_size(key: str, value: Any, shorter_side: bool) -> int | tuple[int, int]:
    """An int ('224') or height x width ('224x160', [224, 160]); for crop an int N means N x N."""
    text = "x".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
    parts = text.lower().replace(",", "x").split("x")
    try:
        numbers = [int(part.strip()) for part in parts]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 2) or min(numbers) < 1 or isinstance(value, (bool, float)):
        raise EdgepipeError(
            f"{key} '{value}' is not a size",
            fix=f"give a positive whole number of pixels or HxW, e.g. --{key} {256 if key == 'resize' else 224}",
        )
    if len(numbers) == 1:
        return numbers[0] if shorter_side else (numbers[0], numbers[0])
    return numbers[0], numbers[1]


def _parse_floats(key: str, value: Any) -> tuple[float, ...]:
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else [value]
    try:
        numbers = tuple(float(item) for item in items)
    except (TypeError, ValueError):
        numbers = ()
    if not numbers or not all(np.isfinite(numbers)):
        raise EdgepipeError(
            f"{key} '{value}' is not a list of numbers", fix=f"give one number per channel, e.g. --{key} {EXAMPLE[key]}"
        )
    return numbers


def _parse_word(key: str, value: Any) -> str:
    return str(value).strip().lower()


def _parse_channels(key: str, value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise EdgepipeError(f"channels '{value}' is not a number", fix="drop 'channels', it comes from the model")


_PARSERS = {
    "resize": lambda key, value: _parse_size(key, value, shorter_side=True),
    "crop": lambda key, value: _parse_size(key, value, shorter_side=False),
    "mean": _parse_floats,
    "std": _parse_floats,
    "channel_order": _parse_word,
    "interpolation": _parse_word,
    "layout": _parse_word,
    "channels": _parse_channels,
}
