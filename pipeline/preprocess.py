"""How an image becomes a model input: resize, centre crop, scale, normalize, in timm/torchvision terms.
Users know their model's preprocessing as ``Resize(256)``, ``CenterCrop(224)``, ``ToTensor()``,
``Normalize(mean, std)``; edgepipe takes exactly those keys and reproduces torchvision's arithmetic on
PIL images, so the images edgepipe calibrates and validates on are the images the model was trained for.
The user's words for it (flag values and --preprocess files alike) are parsed here once, so a typo or a
wrong number is one clear line naming the key, never a failure deep inside a later stage.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from pipeline.errors import EdgepipeError

INTERPOLATIONS = {
    n: getattr(Image.Resampling, n.upper()) for n in ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
}
CHANNEL_ORDERS = ("rgb", "bgr")
LAYOUTS = ("nchw", "nhwc")
KEYS = ("resize", "crop", "mean", "std", "channel_order", "interpolation", "layout", "channels")
EXAMPLE = {"mean": "0.485,0.456,0.406", "std": "0.229,0.224,0.225"}
METADATA_KEY = "edgepipe.preprocess"
_LUMA = np.asarray([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601-2, as PIL's convert("L")


@dataclass(frozen=True)
class Preprocess:
    """One model's preprocessing. ``mean``/``std`` are in [0, 1] units, in the order the model
    receives its channels (BGR order for a BGR model). ``resize`` is the shorter side (an int, as
    torchvision's ``Resize(N)``) or an exact height x width (a pair, as ``Resize((H, W))``)."""

    resize: int | tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channel_order: str = "rgb"
    interpolation: str = "bilinear"
    layout: str = "nchw"
    channels: int = 3
    defaulted: bool = field(default=False, compare=False)  # made by default_for: nothing was given

    def __post_init__(self) -> None:
        for key in ("resize", "crop", "mean", "std"):  # lists (from JSON, or callers) become tuples: hashable
            if isinstance(getattr(self, key), list):
                object.__setattr__(self, key, tuple(getattr(self, key)))
        for key, allowed in (("interpolation", INTERPOLATIONS), ("channel_order", CHANNEL_ORDERS), ("layout", LAYOUTS)):
            choice(key, getattr(self, key), allowed)
        if self.channels not in (1, 3):
            raise EdgepipeError(
                f"the model's input has {self.channels} channels; image preprocessing makes 1 (grayscale) or 3",
                fix="use a model whose image input has 1 or 3 channels",
            )
        if self.channel_order == "bgr" and self.channels == 1:
            raise EdgepipeError(
                "channel_order bgr was given for a model with 1 (grayscale) channel",
                fix="drop --channel-order for grayscale models",
            )
        for key in ("mean", "std"):
            values = getattr(self, key)
            if values is not None and len(values) != self.channels:
                raise EdgepipeError(
                    f"{key} has {len(values)} value{'s' if len(values) != 1 else ''} but the model's input has {self.channels} channel{'s' if self.channels != 1 else ''}",
                    fix=f"give one value per channel, e.g. --{key} {EXAMPLE[key] if self.channels == 3 else '0.5'}",
                )
            if values is not None and max(abs(v) for v in values) > 1.0:
                raise EdgepipeError(
                    f"{key} {_fmt(values)} looks like 0-255 units; edgepipe takes [0, 1] units as timm does",
                    fix=f"divide by 255, e.g. --{key} {EXAMPLE[key]}",
                )
        if self.std is not None and min(self.std) <= 0:
            raise EdgepipeError(
                f"std {_fmt(self.std)} has a value <= 0",
                fix="give positive standard deviations, e.g. --std 0.229,0.224,0.225",
            )
        resized = self.resize if isinstance(self.resize, tuple) else (self.resize, self.resize) if self.resize else None
        if self.crop and resized and (self.crop[0] > resized[0] or self.crop[1] > resized[1]):
            crop, resize = dims(self.crop), self.resize if isinstance(self.resize, int) else dims(self.resize)
            raise EdgepipeError(
                f"crop {crop} is larger than resize {resize} (the centre crop is cut from the resized image)",
                fix="pass a crop no larger than the resize, e.g. --resize 256 --crop 224",
            )

    @classmethod
    def default_for(cls, input_hw: tuple[int, int] | None, channels: int = 3) -> Preprocess:  # nothing given
        return cls(resize=tuple(input_hw) if input_hw else None, channels=channels, defaulted=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Preprocess:
        check_keys(values, "preprocessing")
        return cls(**{key: parse_value(key, value) for key, value in values.items() if value is not None})

    @classmethod
    def from_json(cls, text: str | dict[str, Any]) -> Preprocess:
        """Read what ``to_json`` wrote (a JSON string, or the dict a manifest holds)."""
        if isinstance(text, dict):
            return cls.from_dict(text)
        try:
            values = json.loads(text)
        except ValueError as exc:
            raise EdgepipeError(
                f"the stored preprocessing is not JSON ({exc})",
                fix="pass the preprocessing again with --resize/--crop/--mean/--std or --preprocess FILE",
            )
        if not isinstance(values, dict):
            raise EdgepipeError(
                "the stored preprocessing is not a JSON object",
                fix="pass the preprocessing again with --preprocess FILE",
            )
        return cls.from_dict(values)

    @classmethod
    def from_onnx(cls, model) -> Preprocess | None:  # what an onnx.ModelProto's metadata stores, if any
        text = {prop.key: prop.value for prop in model.metadata_props}.get(METADATA_KEY)
        return None if text is None else cls.from_json(text)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        return {key: list(v) if isinstance(v, tuple) else v for key, v in values.items() if key != "defaulted"}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @property
    def output_hw(self) -> tuple[int, int] | None:
        """Height and width of every preprocessed image, or None when it depends on the image."""
        return self.crop or (self.resize if isinstance(self.resize, tuple) else None)

    def check_fits(self, input_hw: tuple[int, int] | None) -> None:  # the model's static input size
        out = self.output_hw
        if input_hw and out and tuple(out) != tuple(input_hw):
            raise EdgepipeError(
                f"the preprocessing makes {dims(out)} images but the model takes {dims(input_hw)}",
                fix=f"pass --crop {dims(input_hw)} (or --resize {dims(input_hw)})",
            )

    def describe(self) -> str:
        """E.g. 'no preprocessing given: images are resized to 224x224 and scaled to [0, 1]'."""
        steps = ["converted to grayscale"] if self.channels == 1 else []
        if isinstance(self.resize, tuple):
            steps.append(f"resized to {dims(self.resize)}" + ("" if self.defaulted else f" ({self.interpolation})"))
        elif self.resize:
            steps.append(f"resized to {self.resize} on the shorter side ({self.interpolation})")
        elif self.defaulted:
            steps.append("kept at their own size")
        if self.crop:
            steps.append(f"centre-cropped to {dims(self.crop)}")
        steps.append("scaled to [0, 1]")
        if self.mean or self.std:
            steps.append(
                f"normalized with mean {_fmt(self.mean or (0.0,) * self.channels)} and std {_fmt(self.std or (1.0,) * self.channels)}"
            )
        if self.channel_order == "bgr":
            steps.append("with channels in BGR order")
        if self.layout == "nhwc":
            steps.append("laid out as NHWC")
        sentence = "images are " + ", ".join(steps[:-1]) + " and " + steps[-1]
        return ("no preprocessing given: " + sentence) if self.defaulted else sentence

    def apply(self, image: Image.Image) -> np.ndarray:
        """torchvision's Resize + CenterCrop + ToTensor + Normalize on a PIL image; float32 CHW or HWC."""
        return self.scale(self.arrange(image))

    def arrange(self, image: Image.Image) -> np.ndarray:
        """Every step but scaling, as uint8: what image loaders send from their workers (a quarter of
        float32's bytes), ``scale`` then takes a whole batch at once."""
        mode = "RGB" if self.channels == 3 else "L"
        if image.mode != mode:
            image = image.convert(mode)
        return self._arranged(np.asarray(self._geometry(image), dtype=np.uint8))

    def scale(self, array: np.ndarray) -> np.ndarray:
        """ToTensor's /255 (for uint8) and Normalize, for one arranged image or a batch of them; float32."""
        out = np.array(array, dtype=np.float32, order="C")  # always a fresh array: safe to change in place
        if array.dtype == np.uint8:
            out /= np.float32(255)
        shape = (-1, 1, 1) if self.layout == "nchw" else (-1,)  # broadcast over the trailing C,H,W or H,W,C
        if self.mean is not None:
            out -= np.asarray(self.mean, dtype=np.float32).reshape(shape)
        if self.std is not None:
            out /= np.asarray(self.std, dtype=np.float32).reshape(shape)
        return out

    def apply_array(self, array: np.ndarray) -> np.ndarray:
        """The same as ``apply`` for one image held as an array (H x W or H x W x C): uint8 0..255 or float 0..1."""
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.dtype == np.uint8:
            return self.apply(Image.fromarray(np.ascontiguousarray(array)))
        planes = [array] if array.ndim == 2 else [array[..., c] for c in range(array.shape[-1])]
        planes = [
            np.asarray(self._geometry(Image.fromarray(np.ascontiguousarray(p, dtype=np.float32))), dtype=np.float32)
            for p in planes
        ]
        stacked = np.stack(planes, axis=-1)
        if stacked.shape[-1] != self.channels:  # grayscale to 3 channels, or colour to luma
            stacked = np.repeat(stacked, 3, axis=-1) if self.channels == 3 else (stacked @ _LUMA)[..., None]
        return self.scale(self._arranged(stacked))

    def _geometry(self, image: Image.Image) -> Image.Image:
        if self.resize is not None:
            size = self._resized_size(image.size)
            if size != image.size:
                image = image.resize(size, INTERPOLATIONS[self.interpolation])
        if self.crop is not None:
            crop_h, crop_w = self.crop
            width, height = image.size
            if crop_h > height or crop_w > width:
                after = " after resizing" if self.resize is not None else ""
                raise ValueError(f"it is {width}x{height}{after}, smaller than the {dims(self.crop)} crop")
            top, left = int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))  # as torchvision
            image = image.crop((left, top, left + crop_w, top + crop_h))
        return image

    def _resized_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """PIL (width, height) after Resize, with torchvision's arithmetic for a shorter-side size."""
        if isinstance(self.resize, tuple):
            return self.resize[1], self.resize[0]
        width, height = size
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(self.resize * long / short)
        return (self.resize, new_long) if width <= height else (new_long, self.resize)

    def _arranged(self, array: np.ndarray) -> np.ndarray:  # in the model's channel order and layout
        if array.ndim == 2:
            array = array[:, :, None]
        if self.channel_order == "bgr":
            array = array[:, :, ::-1]
        if self.layout == "nchw":
            array = array.transpose(2, 0, 1)
        return np.ascontiguousarray(array)


def _fmt(values) -> str:
    return ",".join(f"{v:.4g}" for v in values)


def parse_value(key: str, value: Any):  # flag text, or what YAML/JSON gave, in its stored type
    return _PARSERS[key](key, value)


def did_you_mean(words: list[str], choices) -> str:
    hints = [f"{w} -> {c[0]}" for w in words if (c := difflib.get_close_matches(w, choices, n=1, cutoff=0.6))]
    return f" (did you mean {', '.join(hints)}?)" if hints else ""


def check_keys(values: dict[str, Any], where: str) -> None:
    unknown = [key for key in values if key not in KEYS]
    if unknown:
        hint = did_you_mean(unknown, KEYS)
        raise EdgepipeError(
            f"{where} has unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}{hint}",
            fix=f"use only {', '.join(KEYS[:-1])}",
        )


def choice(key: str, value: str, allowed) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(str(value), list(allowed), n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise EdgepipeError(f"unknown {key} '{value}'{hint}", fix=f"use one of {', '.join(allowed)}")


def dims(shape) -> str:  # (224, 160) -> "224x160"
    return "x".join(str(d) for d in shape)


def _parse_size(key: str, value: Any) -> int | tuple[int, int]:
    """An int ('224') or height x width ('224x160', [224, 160]); resize N is the shorter side, crop N is N x N."""
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
    if len(numbers) == 1 and key == "resize":
        return numbers[0]
    return numbers[0], numbers[-1]


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


def _parse_channels(key: str, value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise EdgepipeError(f"channels '{value}' is not a number", fix="drop 'channels', it comes from the model")


_PARSERS = {
    **dict.fromkeys(("resize", "crop"), _parse_size),
    **dict.fromkeys(("mean", "std"), _parse_floats),
    **dict.fromkeys(("channel_order", "interpolation", "layout"), lambda key, value: str(value).strip().lower()),
    "channels": _parse_channels,
}
