"""Target GPUs as a sweep names them: ``sm_XY``, which is also the Ray resource a worker advertises.

``sm_89`` is compute capability 8.9 (RTX 40xx), ``sm_87`` Jetson Orin, ``sm_120`` RTX 50xx. A
resource name and a target are one string, so nothing converts between them twice.
"""

from __future__ import annotations

import re

from pipeline.errors import EdgepipeError

TARGET = re.compile(r"sm_(\d+)(\d)", re.IGNORECASE)
# The compute capabilities NVIDIA GPUs have (CUDA's list, Maxwell to Blackwell): a target outside it is a typo.
KNOWN = (50, 52, 53, 60, 61, 62, 70, 72, 75, 80, 86, 87, 89, 90, 100, 101, 103, 110, 120, 121)


def parse_target(name: str) -> str:
    """ "sm_89" -> "8.9", "sm_120" -> "12.0"; anything else is an error naming the fix."""
    match = TARGET.fullmatch(name.strip())
    if not match:
        raise EdgepipeError(
            f"target {name.strip()!r} is not sm_XY",
            fix="name targets by compute capability, e.g. --targets sm_89,sm_87 (RTX 4090 sm_89, Jetson Orin sm_87, A100 sm_80, H100 sm_90)",
        )
    if int(match.group(1) + match.group(2)) not in KNOWN:
        raise EdgepipeError(
            f"target {name.strip()!r} is no NVIDIA GPU architecture",
            fix=f"name a compute capability GPUs have: {', '.join(f'sm_{cc}' for cc in KNOWN)}",
        )
    return f"{int(match.group(1))}.{match.group(2)}"


def target_name(compute_capability: str) -> str:
    """ "8.9" -> "sm_89": the Ray resource a worker with that GPU advertises."""
    major, _, minor = compute_capability.partition(".")
    return f"sm_{major}{minor}"


def is_target(resource: str) -> bool:
    """True for a Ray resource that names a target GPU (``sm_89``), not CPU, memory or a node."""
    return TARGET.fullmatch(resource) is not None


def cc_order(target: str) -> tuple[int, int]:
    """Sort key: sm_80 < sm_87 < sm_89 < sm_120."""
    major, _, minor = parse_target(target).partition(".")
    return int(major), int(minor)
