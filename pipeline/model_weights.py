"""Load a weights file into a built model, strictly, and say exactly why one does not fit. A ``.pt``/``.pth``
is read with ``torch.load(weights_only=True)``, so a weights file cannot run code."""

from __future__ import annotations

import re
import traceback
from pathlib import Path
from typing import Any

from pipeline.digest import sha256_file
from pipeline.errors import EdgepipeError

SAVE_FIX = "save the weights with torch.save(model.state_dict(), PATH) or safetensors.torch.save_file"
WRAPPER_KEYS = ("state_dict", "model")  # where trainers commonly keep the state dict


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """The state dict in ``path`` (tensors on the CPU), unwrapped from a trainer's checkpoint if need be."""
    import torch  # only stages that load weights need torch

    path = Path(path)
    if not path.is_file():
        raise EdgepipeError(
            f"weights file {path} does not exist", fix="pass --weights with a .pt, .pth or .safetensors file"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types for a bad header
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise EdgepipeError(f"{path.name} is not a readable .safetensors file ({reason})", fix=SAVE_FIX) from None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for unsafe or corrupt files
        text = str(exc)
        culprit = re.search(r"GLOBAL ([\w.]+) was not an allowed global", text)
        if culprit:
            raise EdgepipeError(
                f"{path.name} holds pickled Python objects (a {culprit.group(1)}), which edgepipe "
                "does not unpickle (weights_only)",
                fix=SAVE_FIX,
            ) from None
        inner = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
        reason = inner.group(1) if inner else traceback.format_exception_only(type(exc), exc)[-1].strip()
        raise EdgepipeError(
            f"{path.name} is not a readable weights file (torch.load: {reason[:160]})", fix=SAVE_FIX
        ) from None
    blob = next((blob[key] for key in WRAPPER_KEYS if isinstance(blob, dict) and isinstance(blob.get(key), dict)), blob)
    if not (isinstance(blob, dict) and blob and all(isinstance(v, torch.Tensor) for v in blob.values())):
        found = (
            f"a dict with keys {sorted(map(str, blob))[:5]}" if isinstance(blob, dict) else f"a {type(blob).__name__}"
        )
        raise EdgepipeError(f"{path.name} holds {found}, not a state dict of tensors", fix=SAVE_FIX)
    return blob


def mismatch(state: dict[str, Any], expected: dict[str, Any]) -> str | None:  # the first way, or None
    for key, want in expected.items():
        if key not in state:
            more = sum(k not in state for k in expected) - 1
            return f"it has no {key} (the model needs it{f', and {more} more' if more else ''})"
        if tuple(state[key].shape) != tuple(want.shape):
            return f"{key} is {list(state[key].shape)} in the file but {list(want.shape)} in the model"
    extra = [k for k in state if k not in expected]
    if extra:
        more = len(extra) - 1
        return f"it has {extra[0]}, which the model does not{f' (and {more} more)' if more else ''}"
    return None


def load_weights(model, path: str | Path) -> str:
    path = Path(path)
    expected = model.state_dict()
    state, prefix = read_state_dict(path), "module."
    # DataParallel's "module." prefix is dropped when every key has it and the model's keys do not
    if all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in expected):
        state = {k[len(prefix) :]: v for k, v in state.items()}
    problem = mismatch(state, expected)
    if problem:
        raise EdgepipeError(
            f"{path.name} holds weights for another architecture: {problem}",
            fix="pass the weights trained for this --model and its --model-arg values (e.g. num_classes)",
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # e.g. a dtype torch cannot copy
        reason = traceback.format_exception_only(type(exc), exc)[-1].strip()[:200]
        raise EdgepipeError(f"{path.name} does not load into the model: {reason}", fix=SAVE_FIX) from None
    return sha256_file(path)
