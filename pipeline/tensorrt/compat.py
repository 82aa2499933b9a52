"""Before an engine is deserialized: was it built for this TensorRT, this version and this GPU?

A mismatch is a clear error naming both sides and the rebuild command, instead of a crash inside
TensorRT; the checks need no GPU.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pipeline.artifacts import Kind, read_manifest
from pipeline.digest import sha256_file
from pipeline.errors import EdgepipeError
from pipeline.tensorrt.backend import DISPLAY_NAMES, TENSORRT, TENSORRT_RTX, Backend, get_backend
from pipeline.tensorrt.targets import cc_key, normalize_compute_capability


def check_engine_runtime(
    engine_path: str | Path, backend: Any, device_compute_capability: str | None
) -> dict[str, Any]:
    """The engine's manifest, after checking it was built for ``backend`` (a ``Backend`` or a name), its
    version and the GPU of compute capability ``device_compute_capability`` ("X.Y"; None skips that check)."""
    engine = Path(engine_path)
    if not engine.is_file():
        raise EdgepipeError(f"engine {engine} does not exist", fix="build it with 'build-engine MODEL.onnx'")
    be = backend if isinstance(backend, Backend) else get_backend(backend)
    manifest = read_manifest(engine)
    rebuild = f"rebuild it here with 'build-engine {manifest.get('onnx', 'MODEL.onnx') if manifest else 'MODEL.onnx'} --saveEngine {engine} --force'"
    if manifest is None or manifest.get("kind") != Kind.ENGINE:
        raise EdgepipeError(
            f"{engine} has no edgepipe engine manifest, so it cannot be checked against this runtime", fix=rebuild
        )
    if manifest.get("bytes") != engine.stat().st_size or manifest.get("sha256") != sha256_file(engine):
        raise EdgepipeError(
            f"{engine} does not match its manifest (truncated or replaced since it was built)", fix=rebuild
        )
    built = f"{DISPLAY_NAMES.get(manifest['backend'], manifest['backend'])} {manifest['backend_version']}"
    if manifest["backend"] != be.name:
        raise EdgepipeError(
            f"{engine} was built with {built}, but this runtime is {be.display}",
            fix=f"load it with --backend {manifest['backend']}, or {rebuild}",
        )
    if not _version_can_load(manifest, be.version):
        raise EdgepipeError(
            f"{engine} was built with {built}, but this runtime is {be.display}; engines load only with the version that built them",
            fix=rebuild,
        )
    if device_compute_capability:
        device = normalize_compute_capability(device_compute_capability)
        targets = manifest.get("target_compute_capabilities") or []
        if manifest["backend"] == TENSORRT_RTX and targets and device not in targets:
            raise EdgepipeError(
                f"{engine} targets compute capability {', '.join(targets)}, but this GPU is {device}",
                fix=f"{rebuild} (or add --computeCapability {device} when building ahead of time)",
            )
        built_on = manifest.get("gpu_compute_capability")
        ampere_plus = manifest.get("params", {}).get("hardware_compatibility_level") == "ampere+"
        runs_here = cc_key(device)[0] >= 8 if ampere_plus else device == built_on
        if manifest["backend"] == TENSORRT and built_on and not runs_here:
            raise EdgepipeError(
                f"{engine} was built on a GPU of compute capability {built_on}, but this GPU is {device}",
                fix=f"{rebuild} (or build with --hardwareCompatibilityLevel ampere+ for Ampere and newer GPUs)",
            )
    return manifest


def _version_can_load(manifest: dict, runtime_version: str) -> bool:
    built = manifest["backend_version"]
    if built == runtime_version or not manifest.get("params", {}).get("version_compatible"):
        return built == runtime_version
    # Version-compatible engines load on the same or a later release of the same major version.
    b, r = (tuple(int(x) for x in re.findall(r"\d+", v)[:3]) for v in (built, runtime_version))
    return b[0] == r[0] and r >= b
