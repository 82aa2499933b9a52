"""Artifacts: a file edgepipe made (or was given) plus its manifest (``<artifact>.manifest.json``).

``Artifact.open`` reads both once; later stages read facts from it and never work them out again. The one
reuse rule is ``why_stale``: reused when the manifest names the same inputs and settings and the file is
the one it describes. Writes are atomic; finished files get the permissions of the user's umask."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from pipeline.digest import sha256_file
from pipeline.errors import EdgepipeError
from pipeline.machine import tool_versions
from pipeline.onnxfile import load_onnx
from pipeline.precision import Precision, of_onnx

MANIFEST_SUFFIX = ".manifest.json"
# Bump when the layout of artifacts changes in a way older files cannot be reused.
ARTIFACT_FORMAT = 2


class Kind(str, Enum):
    CHECKPOINT = "checkpoint"
    ONNX = "onnx"
    CALIBRATION = "calibration"
    ENGINE = "engine"
    CALIBRATION_CACHE = "calibration-cache"
    RESULT = "result"  # validate/bench JSON written by a run

    def __str__(self) -> str:
        return self.value


SUFFIXES = {".pt": Kind.CHECKPOINT, ".pth": Kind.CHECKPOINT, ".onnx": Kind.ONNX, ".npz": Kind.CALIBRATION}
SUFFIXES |= dict.fromkeys((".engine", ".plan", ".trt"), Kind.ENGINE)  # the names TensorRT's tools give engines


@dataclass(frozen=True)
class Artifact:
    """One file and its manifest ({} for a file made elsewhere, e.g. an ONNX from another exporter)."""

    path: Path
    kind: Kind
    manifest: dict[str, Any] = field(default_factory=dict, repr=False)
    precision: Precision | None = None

    @classmethod
    def open(cls, path: str | Path) -> Artifact:
        path = Path(path)
        if not path.is_file():
            raise EdgepipeError(f"{path} does not exist", fix="pass an existing .onnx model, engine file or checkpoint")
        kind = SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise EdgepipeError(
                f"cannot tell what {path} is from its suffix",
                fix="pass an .onnx model, a .engine/.plan file or a .pt checkpoint",
            )
        manifest = read_manifest(path) or {}
        recorded = manifest.get("precision") or (manifest.get("params") or {}).get("precision")
        if recorded:
            precision = Precision(recorded)
        elif kind is Kind.ONNX:  # an ONNX made elsewhere: its graph is the only record
            precision = of_onnx(load_onnx(path))
        else:
            precision = Precision.FP32 if kind is Kind.CHECKPOINT else None
        return cls(path, kind, manifest, precision)

    @property
    def made_from(self) -> dict[str, str]:
        return self.manifest.get("inputs") or {}

    @property
    def backend(self) -> str | None:
        return self.manifest.get("backend")

    @property
    def name(self) -> str:
        return self.path.name

    def intact(self) -> bool:
        """True when the file is the one its manifest describes (not truncated or replaced)."""
        return (
            bool(self.manifest)
            and self.manifest.get("bytes") == self.path.stat().st_size
            and self.manifest.get("sha256") == sha256_file(self.path)
        )


# How a reason names an input role: "exists but was made from other inputs: another ONNX model".
ROLE_NAMES = {"onnx": "ONNX model", "checkpoint": "checkpoint", "calibration": "calibration set", "data": "dataset"}


def why_stale(path: str | Path, kind: Kind | str, inputs: dict[str, Any], params: dict[str, Any]) -> str | None:
    """Why ``path`` cannot be reused for these inputs and settings, as a phrase that follows the
    file's name ("model.engine exists but ..."); None when it can be reused."""
    path = Path(path)
    if not path.is_file():
        return "does not exist"
    manifest = read_manifest(path)
    if manifest is None or manifest.get("format") != ARTIFACT_FORMAT or manifest.get("kind") != str(kind):
        return "has no edgepipe manifest of this kind and format, so it may be another model's file"
    recorded = manifest.get("inputs", {})
    roles = [role for role, sha in inputs.items() if recorded.get(role) != sha]
    roles += [role for role in recorded if role not in inputs]
    reasons = [f"another {ROLE_NAMES.get(role, role)}" for role in roles]
    old = manifest.get("params", {})
    new = json.loads(json.dumps(params, default=str))
    reasons += [f"{key} {old.get(key)} (now {value})" for key, value in new.items() if old.get(key) != value]
    reasons += [f"{key} {value} (now not set)" for key, value in old.items() if key not in new]
    if reasons:
        return "was made from other inputs: " + "; ".join(reasons)
    if manifest.get("bytes") != path.stat().st_size or manifest.get("sha256") != sha256_file(path):
        return "changed since it was made (sha256 differs from its manifest)"
    return None


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
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds, so an
    error or Ctrl-C leaves no half-written file and keeps any older one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp_path, 0o666 & ~mask)  # mkstemp makes 0600; outputs follow the umask, as open() would
        os.replace(tmp_path, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_manifest(
    artifact: str | Path,
    kind: Kind | str,
    inputs: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Write the manifest for a finished artifact: ``inputs`` (role -> sha256), ``params`` (the settings)
    and ``extra``, the facts later stages read (``precision``, ``backend``, figures)."""
    artifact = Path(artifact)
    manifest = {
        "format": ARTIFACT_FORMAT,
        "kind": str(kind),
        "file": artifact.name,
        "sha256": sha256_file(artifact),
        "bytes": artifact.stat().st_size,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "inputs": inputs or {},
        "params": json.loads(json.dumps(params or {}, default=str)),
        "tools": tool_versions(),
        **json.loads(json.dumps(extra, default=str)),
    }
    write_json_atomic(manifest_path(artifact), manifest)
    return manifest


def read_manifest(artifact: str | Path) -> dict[str, Any] | None:
    """The artifact's manifest, or None when it has none or it is unreadable."""
    try:
        return json.loads(manifest_path(artifact).read_text())
    except (OSError, ValueError):
        return None
