"""timm models: built with random weights (weights load from a local file, never a hub), and their own
data config. timm is optional and imports torchvision, so it is imported only inside these functions."""

from __future__ import annotations

import difflib
import math
import traceback
from typing import Any

from pipeline.errors import EdgepipeError

TIMM_PREFIX = "timm:"
INSTALL_FIX = "pip install 'edgepipe[timm]' (timm needs a torchvision that matches your torch)"


def _import_timm():
    try:
        import timm  # optional, and it imports torchvision
    except Exception as exc:  # ImportError, or torchvision failing to load against this torch
        reason = traceback.format_exception_only(type(exc), exc)[-1].strip()[:200]
        raise EdgepipeError(f"timm models need timm, which does not import here ({reason})", fix=INSTALL_FIX) from None
    return timm


def create_timm(name: str, kwargs: dict[str, Any]):
    timm = _import_timm()
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = ("; did you mean " + " or ".join(f"timm:{c}" for c in close) + "?") if close else ""
        raise EdgepipeError(
            f"timm has no model {name!r}{hint}", fix="pass --model timm:NAME with a name from timm.list_models()"
        )
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except Exception as exc:  # e.g. a --model-arg the model's constructor does not take
        reason = traceback.format_exception_only(type(exc), exc)[-1].strip()[:200]
        raise EdgepipeError(
            f"timm could not build {name} with {kwargs}: {reason}", fix="check the --model-arg values"
        ) from None


def timm_default_input_size(name: str, in_chans: int | None = None) -> tuple[int, int, int] | None:
    timm = _import_timm()
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not cfg.input_size:
        return None
    channels, height, width = cfg.input_size
    return (int(in_chans or channels), int(height), int(width))


def timm_data_config(model) -> dict[str, Any]:
    """timm's data config for ``model`` (input_size [C, H, W], interpolation, crop_pct, crop_mode, mean,
    std) and the evaluation preprocessing it implies (resize, crop, channel_order, layout); plain types."""
    timm = _import_timm()
    from torch import nn  # timm models are torch modules

    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    args = {"in_chans": conv.in_channels} if conv is not None and conv.in_channels else None
    resolve = getattr(timm.data, "resolve_model_data_config", None)
    cfg = resolve(model, args=args) if resolve else timm.data.resolve_data_config(args or {}, model=model)
    c, h, w = (int(v) for v in cfg["input_size"])
    crop_pct = float(cfg.get("crop_pct") or 0.875)
    mean, std = [float(v) for v in cfg["mean"]], [float(v) for v in cfg["std"]]
    if len(mean) != c:  # e.g. a 1-channel model with ImageNet's RGB statistics: average them
        mean, std = [sum(mean) / len(mean)] * c, [sum(std) / len(std)] * c
    return {
        "input_size": [c, h, w],
        "interpolation": str(cfg.get("interpolation") or "bilinear"),
        "crop_pct": crop_pct,
        "crop_mode": str(cfg.get("crop_mode") or "center"),
        "mean": mean,
        "std": std,
        "resize": _resize(h, w, crop_pct),
        "crop": [h, w],
        "channel_order": "rgb" if c == 3 else "gray" if c == 1 else f"{c}-channel",
        "layout": "nchw",
    }


def timm_preprocess(model, size: tuple[int, int]) -> dict[str, Any]:
    """timm's evaluation preprocessing for ``model`` in ``Preprocess`` keys, at ``size`` (H, W): the resize
    keeps timm's crop_pct, as ``resolve_data_config(input_size=...)`` would give."""
    cfg = timm_data_config(model)
    height, width = size
    kept = {key: cfg[key] for key in ("mean", "std", "channel_order", "interpolation", "layout")}
    return {
        "resize": _resize(height, width, cfg["crop_pct"]),
        "crop": [height, width],
        **kept,
        "channels": cfg["input_size"][0],
    }


def _resize(height: int, width: int, crop_pct: float) -> int | list[int]:
    """timm's evaluation resize: floor(size / crop_pct), the shorter side of a square input, else [H, W]."""
    sizes = [math.floor(height / crop_pct), math.floor(width / crop_pct)]
    return sizes[0] if height == width else sizes
