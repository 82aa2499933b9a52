"""Artifacts: atomic writes, sha256 and the JSON manifest beside every file edgepipe makes.

A manifest ``<artifact>.manifest.json`` records what the artifact was made from (the sha256 of
each input), the parameters, and the tool versions. A stage whose manifest still matches its
inputs and parameters is not redone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from pipeline import __version__
from pipeline.errors import EdgepipeError

MANIFEST_SUFFIX = ".manifest.json"
# Bump when the layout of artifacts changes in a way older files cannot be reused.
ARTIFACT_FORMAT = 1

_TOOLS = ("torch", "onnx", "onnxruntime", "nvidia-modelopt", "polygraphy", "tensorrt", "tensorrt-rtx")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tool_versions() -> dict[str, str]:
    versions = {"edgepipe": __version__, "python": platform.python_version()}
    for name in _TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def manifest_path(artifact: str | Path) -> Path:
    return Path(str(artifact) + MANIFEST_SUFFIX)


def check_output(path: str | Path, force: bool) -> Path:
    """Refuse to overwrite an existing file unless --force; make sure the folder is writable."""
    path = Path(path)
    if path.is_dir():
        raise EdgepipeError(f"output {path} is a directory", fix="give a file name")
    if path.exists() and not force:
        raise EdgepipeError(f"{path} already exists", fix="choose another output path or pass --force")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgepipeError(f"cannot create folder {parent}: {exc.strerror}", fix="choose a writable output path")
    if not os.access(parent, os.W_OK):
        raise EdgepipeError(f"cannot write to {parent}", fix="choose a writable output path")
    return path


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds.

    An error or Ctrl-C inside the block leaves no half-written file and keeps any older file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_manifest(
    artifact: str | Path,
    kind: str,
    inputs: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Write the manifest for a finished artifact. ``inputs`` maps a role to a sha256."""
    artifact = Path(artifact)
    manifest = {
        "format": ARTIFACT_FORMAT,
        "kind": kind,
        "file": artifact.name,
        "sha256": sha256_file(artifact),
        "bytes": artifact.stat().st_size,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "inputs": inputs or {},
        "params": params or {},
        "tools": tool_versions(),
        **extra,
    }
    write_json_atomic(manifest_path(artifact), manifest)
    return manifest


def read_manifest(artifact: str | Path) -> dict[str, Any] | None:
    """The artifact's manifest, or None when it has none or it is unreadable."""
    path = manifest_path(artifact)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_up_to_date(artifact: str | Path, kind: str, inputs: dict[str, str], params: dict[str, Any]) -> bool:
    """True when ``artifact`` exists, is intact, and was made from the same inputs and params."""
    artifact = Path(artifact)
    manifest = read_manifest(artifact)
    if not artifact.is_file() or manifest is None:
        return False
    return (
        manifest.get("format") == ARTIFACT_FORMAT
        and manifest.get("kind") == kind
        and manifest.get("inputs") == inputs
        and manifest.get("params") == json.loads(json.dumps(params))
        and manifest.get("bytes") == artifact.stat().st_size
        and manifest.get("sha256") == sha256_file(artifact)
    )
