"""How an image becomes a model input: resize, centre crop, scale, normalize, in timm/torchvision terms.

Users of timm and torchvision already know their model's preprocessing as ``Resize(256)``,
``CenterCrop(224)``, ``ToTensor()``, ``Normalize(mean, std)``; edgepipe takes exactly those keys and
reproduces torchvision's arithmetic on PIL images, so the images edgepipe calibrates and validates on
are the images the model was trained for.

    pre = Preprocess.from_dict({"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
    array = pre.apply(PIL.Image.open("cat.jpg"))    # float32, 3x224x224
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from pipeline.errors import EdgepipeError
from pipeline.preprocess_options import (
    CHANNEL_ORDERS,
    EXAMPLE,
    INTERPOLATION_NAMES,
    LAYOUTS,
    check_keys,
    choice,
    dims,
    parse_value,
)

METADATA_KEY = "edgepipe.preprocess"
INTERPOLATIONS = {name: getattr(Image.Resampling, name.upper()) for name in INTERPOLATION_NAMES}
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
        choice("interpolation", self.interpolation, INTERPOLATIONS)
        choice("channel_order", self.channel_order, CHANNEL_ORDERS)
        choice("layout", self.layout, LAYOUTS)
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
    def default_for(cls, input_hw: tuple[int, int] | None, channels: int = 3) -> Preprocess:
        """What edgepipe does when given nothing: resize to the model's static input size, scale to [0, 1]."""
        return cls(resize=tuple(input_hw) if input_hw else None, channels=channels, defaulted=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Preprocess:
        check_keys(values, "preprocessing")
        parsed = {key: parse_value(key, value) for key, value in values.items() if value is not None}
        return cls(**parsed)

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
    def from_onnx(cls, model) -> Preprocess | None:
        """The preprocessing stored in an ``onnx.ModelProto``'s metadata, or None when there is none."""
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

    def check_fits(self, input_hw: tuple[int, int] | None) -> None:
        """Raise when this preprocessing makes images of another size than the model's static input."""
        out = self.output_hw
        if input_hw and out and tuple(out) != tuple(input_hw):
            raise EdgepipeError(
                f"the preprocessing makes {dims(out)} images but the model takes {dims(input_hw)}",
                fix=f"pass --crop {dims(input_hw)} (or --resize {dims(input_hw)})",
            )

    def describe(self) -> str:
        """One sentence for the user, e.g. 'no preprocessing given: images are resized to 224x224 and scaled to [0, 1]'."""
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

    def _arranged(self, array: np.ndarray) -> np.ndarray:
        """H x W (x C) pixels in the model's channel order and layout, contiguous."""
        if array.ndim == 2:
            array = array[:, :, None]
        if self.channel_order == "bgr":
            array = array[:, :, ::-1]
        if self.layout == "nchw":
            array = array.transpose(2, 0, 1)
        return np.ascontiguousarray(array)


def _fmt(values) -> str:
    return ",".join(f"{v:.4g}" for v in values)
