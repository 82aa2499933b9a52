"""``--input-size [C x] H x W``: ``96x96`` keeps the model's channels; ``3x96x96`` also names them, which
must then match the model's where the model fixes them; ``N`` is an N x N square."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.errors import EdgepipeError

FORMAT = "[Cx]HxW"
_PATTERN = re.compile(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?(?:[xX]\s*(\d+)\s*)?")


@dataclass(frozen=True)
class InputSize:
    height: int
    width: int
    channels: int | None = None

    @classmethod
    def parse(cls, text: str, option: str = "--input-size") -> InputSize:
        """ "3x96x96" -> InputSize(96, 96, 3); "96x128" -> InputSize(96, 128); "96" -> InputSize(96, 96)."""
        match = _PATTERN.fullmatch(str(text))
        values = [int(v) for v in match.groups() if v is not None] if match else []
        if not values or min(values) < 1:
            raise EdgepipeError(
                f"{option} {text!r} is not a size in the format [C x] H x W",
                fix=f"pass height x width, e.g. {option} 96x96, or channels x height x width, e.g. {option} 3x96x96",
            )
        if len(values) == 3:
            return cls(values[1], values[2], values[0])
        return cls(values[0], values[-1])

    @property
    def hw(self) -> tuple[int, int]:
        return (self.height, self.width)

    def chw(self, channels: int | None = None) -> tuple[int | None, int, int]:
        """(C, H, W): the channels named, else ``channels`` (the model's or the data's; None: not known yet)."""
        return (self.channels if self.channels is not None else channels, self.height, self.width)

    def check_channels(self, model_channels: int | None, what: str = "the model") -> None:  # None: left open
        if self.channels is not None and model_channels is not None and self.channels != model_channels:
            raise EdgepipeError(
                f"--input-size {self} names {self.channels} channels but {what} takes {model_channels}",
                fix=f"pass --input-size {self.height}x{self.width} (keeps the model's channels) "
                f"or {model_channels}x{self.height}x{self.width}",
            )

    def __str__(self) -> str:
        return "x".join(str(v) for v in (self.channels, self.height, self.width) if v is not None)
