"""A build's settings, parsed once at the edge into one frozen value: ``BuildSettings``; target GPUs
(compute capabilities) as users write them and as a build resolves them for a backend.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.cuda import current_compute_capability
from pipeline.errors import EdgepipeError
from pipeline.precision import Precision, parse

# min, opt, max of a dynamic batch when no shapes are given: 1 is the latency case the engine is tuned for,
# 64 the batch validation and benchmarks feed, so they run without splitting batches
DEFAULT_BATCH = (1, 1, 64)
SHAPE_KINDS = ("min", "opt", "max")
DEFAULT_MIN_MAJOR = 8  # default TensorRT-RTX targets without a GPU: Ampere and newer

# trtexec's names for --hardwareCompatibilityLevel, and the enum member each one means.
HARDWARE_COMPATIBILITY = {"none": "NONE", "ampere+": "AMPERE_PLUS", "sameComputeCapability": "SAME_COMPUTE_CAPABILITY"}

# trtexec's names for --memPoolSize pools.
MEMORY_POOLS = {
    "workspace": "WORKSPACE",
    "dlaSRAM": "DLA_MANAGED_SRAM",
    "dlaLocalDRAM": "DLA_LOCAL_DRAM",
    "dlaGlobalDRAM": "DLA_GLOBAL_DRAM",
    "tacticSharedMem": "TACTIC_SHARED_MEMORY",
}


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
    legacy_precision: bool = False  # the builder's FP16/INT8 flags and an INT8 calibrator (TensorRT <= 10)
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
        """Settings from the Python API's keywords: the fields, or trtexec's flags as ``build-engine`` names them."""
        unknown = set(flags) - set(_RENAMES) - set(cls.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown build settings: {', '.join(sorted(unknown))}")
        values = {_RENAMES.get(key, key): value for key, value in flags.items()}
        return cls(**{key: _PARSERS[key](v) if key in _PARSERS else v for key, v in values.items() if v is not None})

    def __post_init__(self) -> None:
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


def parse_shapes(text: str | dict | None, option: str = "--shapes") -> dict[str, tuple[int, ...]]:
    """trtexec's "input:1x3x32x32,other:1x8" -> {"input": (1, 3, 32, 32), "other": (1, 8)}."""
    if not text:
        return {}
    if isinstance(text, dict):
        return {name: tuple(int(d) for d in shape) for name, shape in text.items()}
    shapes = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, dims = item.rpartition(":")
        name = name.strip("'\"")
        if not sep or not name or not re.fullmatch(r"\d+(x\d+)*", dims):
            raise EdgepipeError(
                f"{option} {item!r} is not NAME:DIMS",
                fix=f"write it as trtexec does, e.g. {option} input:1x1x32x32 (several inputs separated by commas)",
            )
        shapes[name] = tuple(int(d) for d in dims.split("x"))
    return shapes


def resolve_profiles(inputs: list[tuple[str, tuple[int, ...]]], shapes: dict[str, dict]) -> tuple[dict, str | None]:
    """{input: (min, opt, max)} for the dynamic inputs, from the parsed shape flags checked against the model; plus
    a note. A missing min or max takes the opt shape, a missing opt takes max (trtexec fills them the same way);
    static models need no profile, and shapes given for them must equal their shape."""
    given = {kind: (shapes or {}).get(kind) or {} for kind in SHAPE_KINDS}
    known = dict(inputs)
    for kind, by_name in given.items():
        for name in by_name:
            if name not in known:
                raise EdgepipeError(
                    f"--{kind}Shapes names input {name!r}, which the model does not have (inputs: {', '.join(known)})",
                    fix=f"use the model's input name, e.g. --{kind}Shapes {next(iter(known), 'input')}:{_dims(known.get(next(iter(known), ''), ()))}",
                )
    profiles, notes = {}, []
    for name, shape in inputs:
        lo, opt, hi = (given[kind].get(name) for kind in ("min", "opt", "max"))
        if lo is None and opt is None and hi is None:
            if -1 not in shape:
                continue
            if -1 in shape[1:]:
                example = _dims(tuple(1 if axis == 0 else d for axis, d in enumerate(shape)), 224)
                raise EdgepipeError(
                    f"input {name!r} has dynamic dimensions besides the batch ({_dims(shape)})",
                    fix=f"pass --minShapes/--optShapes/--maxShapes {name}:... (--optShapes is the size the engine is tuned, converted and checked at), e.g. --optShapes {name}:{example}",
                )
            lo, opt, hi = ((b, *shape[1:]) for b in DEFAULT_BATCH)
            notes.append(f"{name}: batch {'/'.join(map(str, DEFAULT_BATCH))}")
        opt = opt or hi or lo
        lo, hi = lo or opt, hi or opt
        _check_profile(name, shape, lo, opt, hi)
        if -1 in shape:
            profiles[name] = (lo, opt, hi)
    note = (
        f"Dynamic batch and no --minShapes/--optShapes/--maxShapes: using min/opt/max {', '.join(notes)} "
        "(pass the shape flags for another range)"
    )
    return profiles, note if notes else None


def _check_profile(name: str, shape: tuple[int, ...], lo: tuple, opt: tuple, hi: tuple) -> None:
    for kind, dims in (("min", lo), ("opt", opt), ("max", hi)):
        if len(dims) != len(shape):
            raise EdgepipeError(
                f"--{kind}Shapes {name}:{_dims(dims)} has {len(dims)} dimensions, but the input has {len(shape)} ({_dims(shape)})",
                fix=f"give {len(shape)} dimensions, e.g. {name}:{_dims(shape, 1)}",
            )
        for axis, (want, got) in enumerate(zip(shape, dims)):
            if got < 1:
                raise EdgepipeError(
                    f"--{kind}Shapes {name}:{_dims(dims)} has a dimension below 1", fix="use dimensions of 1 or more"
                )
            if want != -1 and want != got:
                raise EdgepipeError(
                    f"--{kind}Shapes {name}:{_dims(dims)} does not fit the model's input {_dims(shape)} (dimension {axis} is fixed at {want})",
                    fix=f"keep the fixed dimensions, e.g. {name}:{_dims(shape, got if want == -1 else 1)}; export with --dynamic-batch to vary the batch",
                )
    for axis in range(len(shape)):
        if not lo[axis] <= opt[axis] <= hi[axis]:
            raise EdgepipeError(
                f"shapes for {name!r} are out of order at dimension {axis}: min {_dims(lo)}, opt {_dims(opt)}, max {_dims(hi)}",
                fix="give min <= opt <= max in every dimension",
            )


def _dims(shape: tuple, dynamic: int | None = None) -> str:
    return "x".join(str(dynamic if (d == -1 and dynamic is not None) else ("?" if d == -1 else d)) for d in shape)


def _profiles_json(profiles: dict) -> list[dict]:
    shapes = {name: {"min": list(lo), "opt": list(opt), "max": list(hi)} for name, (lo, opt, hi) in profiles.items()}
    return [shapes] if profiles else []


def parse_mem_pool_size(value: str | dict | None) -> dict[str, int]:
    """trtexec's "workspace:1024,dlaSRAM:0.5" -> bytes per pool. A bare number is MiB; K/M/G suffixes."""
    if not value:
        return {}
    if isinstance(value, dict):
        return {pool: int(size) for pool, size in value.items()}
    pools = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        pool, sep, size = item.partition(":")
        match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGkmg]?)(?:i?[Bb])?", size.strip())
        if not sep or pool not in MEMORY_POOLS or not match:
            raise EdgepipeError(
                f"--memPoolSize {item!r} is not POOL:SIZE",
                fix=f"write e.g. --memPoolSize workspace:1024 (MiB) or workspace:2G; pools: {', '.join(MEMORY_POOLS)}",
            )
        unit = {"": 2**20, "k": 2**10, "m": 2**20, "g": 2**30}[match.group(2).lower()]
        pools[pool] = int(float(match.group(1)) * unit)
    return pools


def _hardware_compatibility(level: str | None) -> str | None:
    if level is None or level == "none":
        return None
    aliases = {"same-cc": "sameComputeCapability", "ampere_plus": "ampere+"}
    aliases.update({name.lower(): name for name in HARDWARE_COMPATIBILITY})
    if level.lower() not in aliases:
        raise EdgepipeError(
            f"--hardwareCompatibilityLevel {level!r} is unknown", fix=f"use one of {', '.join(HARDWARE_COMPATIBILITY)}"
        )
    return aliases[level.lower()]


def normalize_compute_capability(text: str) -> str:
    """ "8.9", "sm89", "SM_89", "89" -> "8.9"; "current" stays. An unreadable value is an error."""
    value = text.strip().lower().replace("_", "")
    if value == "current":
        return value
    value = value.removeprefix("sm")
    major, _, minor = value.partition(".") if "." in value else (value[:-1], "", value[-1:])
    if not (major.isdigit() and minor.isdigit()):
        raise EdgepipeError(
            f"--computeCapability {text!r} is not a compute capability",
            fix="pass it as X.Y, e.g. --computeCapability 8.9, or 'current'",
        )
    return f"{int(major)}.{int(minor)}"


def cc_key(cc: str) -> tuple[int, int]:
    """ "8.9" -> (8, 9): compute capabilities in order, and the major at [0]."""
    return tuple(map(int, cc.split(".")))


def resolve_compute_capabilities(be: Any, requested) -> tuple[list[str], list[str]]:
    """(what the builder is given, the concrete "X.Y" targets recorded in the manifest).

    TensorRT-RTX: the requested list; otherwise the GPU here (CURRENT), or without a GPU every target from
    Ampere (8.0) on, so one engine runs on any recent RTX GPU. Turing (7.5) is left out of that default: its
    FP32 matrix multiplies do not compile; name it with --computeCapability 7.5 for FP16/INT8 engines.
    """
    if not be.has_compute_capability_targets:
        return [], []  # standard TensorRT builds for the GPU it runs on
    supported = be.compute_capability_targets()
    device = current_compute_capability()
    requested = [normalize_compute_capability(cc) for cc in (requested or [])]
    if not requested:
        requested = ["current"] if device else [cc for cc in supported if cc_key(cc)[0] >= DEFAULT_MIN_MAJOR]
    if "current" in requested and not device:
        raise EdgepipeError(
            "--computeCapability current needs a GPU, and none was found here",
            fix=f"name the target GPUs, e.g. --computeCapability 8.9 (supported: {', '.join(supported)})",
        )
    targets = []
    for cc in dict.fromkeys(requested):
        concrete = device if cc == "current" else cc
        if concrete not in supported:
            where = "this GPU's compute capability" if cc == "current" else "compute capability"
            raise EdgepipeError(
                f"{be.display} cannot build for {where} {concrete}",
                fix=f"pass --computeCapability with targets it supports ({', '.join(supported)}), or use standard TensorRT (--backend tensorrt) for this GPU",
            )
        targets.append(concrete)
    return list(dict.fromkeys(requested)), targets


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
    "shapes": lambda shapes: {kind: parse_shapes(shapes.get(kind), f"--{kind}Shapes") for kind in SHAPE_KINDS},
    "memory_pools": parse_mem_pool_size,
    "timing_cache": lambda value: Path(value) if value else None,
    "hardware_compatibility": _hardware_compatibility,
    "compute_capability": tuple,
    "reading": dict,
}
