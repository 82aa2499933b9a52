"""`BuildSettings`: what the user asked of a build, parsed once at the edge and checked before any work.

trtexec's raw flags (``input:1x3x224x224``, ``workspace:1024``, ``ampere+``) become values here; the
stage never sees a string it must parse again. The settings that decide what the engine is are
recorded in its manifest (``params``), which the one reuse rule of ``pipeline.artifacts`` compares.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import EdgepipeError
from pipeline.precision import Precision, parse
from pipeline.tensorrt.options import _hardware_compatibility, parse_mem_pool_size, parse_shapes

SHAPE_KINDS = ("min", "opt", "max")


@dataclass(frozen=True)
class BuildSettings:
    """A build's settings as values. ``BuildSettings.parse(**flags)`` makes one from the Python API's keywords.

    ``precision``: None builds the model at the precision it has. ``shapes``: {"min"|"opt"|"max":
    {input: dims}}. ``calib``: INT8 calibration images (a set, an .npz or a folder); ``data``: images to
    check an FP16/INT8 conversion on (and draw INT8 calibration from); ``reading``: how a folder of
    them is read (``preprocess`` flags, ``labels``, ``workers``). ``compute_capability``: TensorRT-RTX
    targets as "X.Y" or "current". The rest are trtexec's build controls, checked.
    """

    precision: Precision | None = None
    calib: Any = None
    data: str | None = None
    reading: dict[str, Any] = field(default_factory=dict)
    backend: str = "auto"
    shapes: dict[str, dict[str, tuple[int, ...]]] = field(default_factory=dict)
    legacy_precision: bool = False
    memory_pools: dict[str, int] = field(default_factory=dict)
    optimization_level: int | None = None
    timing_cache: Path | None = None
    dla_core: int | None = None
    gpu_fallback: bool = False
    hardware_compatibility: str | None = None
    version_compatible: bool = False
    compute_capability: tuple[str, ...] = ()
    verbose: bool = False

    @classmethod
    def parse(cls, **flags: Any) -> BuildSettings:
        """Settings from the Python API's keywords (trtexec's flags, named as ``build-engine``'s options are).

        ``mem_pool_size``, ``builder_optimization_level``, ``timing_cache_file``, ``use_dla_core``,
        ``allow_gpu_fallback``, ``hardware_compatibility_level`` take trtexec's meaning; every other
        keyword is a field. Each bad flag is one clear error.
        """
        unknown = set(flags) - set(_RENAMES) - set(cls.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown build settings: {', '.join(sorted(unknown))}")
        values = {_RENAMES.get(key, key): value for key, value in flags.items()}
        values = {key: _PARSERS.get(key, _same)(value) for key, value in values.items() if value is not None}
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """What the settings alone can tell is wrong, before the model is read."""
        if self.calib is not None and self.precision is not Precision.INT8:
            raise EdgepipeError("a calibration set is only used for INT8", fix="add --int8, or drop --calib")
        if self.dla_core is not None and self.dla_core < 0:
            raise EdgepipeError(f"--useDLACore must be 0 or more, got {self.dla_core}", fix="pass --useDLACore 0 or 1")
        if self.optimization_level is not None and not 0 <= self.optimization_level <= 5:
            raise EdgepipeError(
                f"--builderOptimizationLevel must be 0-5, got {self.optimization_level}",
                fix="pass a level from 0 (fastest build) to 5 (3 is the default)",
            )

    @property
    def has_images(self) -> bool:
        """True when the user gave images (``calib`` or ``data``) INT8 calibration can come from."""
        return self.calib is not None or self.data is not None

    @property
    def folder_given(self) -> bool:
        """True when ``data`` or ``calib`` is a folder of images, which the preprocessing flags describe."""
        return self.data is not None or (isinstance(self.calib, (str, Path)) and os.path.isdir(self.calib))

    def controls(self) -> dict[str, Any]:
        """The build controls as the engine's manifest records them (part of what decides reuse)."""
        return {
            "memory_pools": self.memory_pools,
            "builder_optimization_level": self.optimization_level,
            "dla_core": self.dla_core,
            "gpu_fallback": self.gpu_fallback,
            "hardware_compatibility_level": self.hardware_compatibility,
            "version_compatible": self.version_compatible,
            "data": self.data,
        }


def _same(value: Any) -> Any:
    return value


def _shapes(shapes: dict[str, Any]) -> dict[str, dict[str, tuple[int, ...]]]:
    return {kind: parse_shapes(shapes.get(kind), f"--{kind}Shapes") for kind in SHAPE_KINDS}


# trtexec's flag names (the Python API's keywords) -> the field each one sets, and how a raw value is read.
_RENAMES = {
    "mem_pool_size": "memory_pools",
    "builder_optimization_level": "optimization_level",
    "timing_cache_file": "timing_cache",
    "use_dla_core": "dla_core",
    "allow_gpu_fallback": "gpu_fallback",
    "hardware_compatibility_level": "hardware_compatibility",
}
_PARSERS = {
    "precision": parse,
    "shapes": _shapes,
    "memory_pools": parse_mem_pool_size,
    "timing_cache": lambda value: Path(value) if value else None,
    "hardware_compatibility": _hardware_compatibility,
    "compute_capability": tuple,
    "reading": dict,
}
