"""Target GPUs: compute capabilities as users write them, and the TensorRT-RTX targets of a build."""

from __future__ import annotations

from typing import Any

from pipeline.cuda import current_compute_capability
from pipeline.errors import EdgepipeError

DEFAULT_MIN_MAJOR = 8  # default TensorRT-RTX targets without a GPU: Ampere and newer


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
    major, minor = cc.split(".")
    return int(major), int(minor)


def resolve_compute_capabilities(be: Any, requested) -> tuple[list[str], list[str]]:
    """(what the builder is given, the concrete "X.Y" targets recorded in the manifest).

    TensorRT-RTX: the requested list; otherwise the GPU here (CURRENT), or on a machine without
    a GPU every target from Ampere (8.0) on, so one engine runs on any recent RTX GPU. Turing (7.5)
    is left out of that default because TensorRT-RTX cannot compile FP32 matrix multiplies for it;
    name it with --computeCapability 7.5 for FP16/INT8 engines.
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
