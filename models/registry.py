"""Model registry: decorator registration, lookup by name, and size counters."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

_REGISTRY: dict[str, dict[str, Any]] = {}


class UnknownModelError(ValueError):
    """A model name that edgepipe cannot build."""


def register_model(
    name: str | None = None,
    *,
    attention: str,
    description: str,
    default_epochs: int | None = None,
    default_lr: float | None = None,
) -> Callable:
    """Register a factory ``fn(num_classes=10, in_chans=1, img_size=32, **kw) -> nn.Module``.

    The name defaults to the function's name. ``default_epochs``/``default_lr`` record the
    training recipe that reaches the zoo's accuracy target on the bundled digits dataset.
    """

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        if key in _REGISTRY and _REGISTRY[key]["fn"] is not fn:
            raise ValueError(f"model {key!r} is already registered")
        info: dict[str, Any] = {"name": key, "attention": attention, "description": description}
        if default_epochs is not None:
            info["default_epochs"] = int(default_epochs)
        if default_lr is not None:
            info["default_lr"] = float(default_lr)
        _REGISTRY[key] = {"fn": fn, "info": info}
        return fn

    return decorator


def names() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def _unknown(name: str) -> UnknownModelError:
    """An error naming the closest registered names, so a typo is one glance from its fix."""
    scored = sorted(((difflib.SequenceMatcher(None, name, n).ratio(), n) for n in names()), reverse=True)
    # Offer the best match, plus any that are nearly as good (e.g. two equally likely typos).
    close = [n for r, n in scored[:3] if r >= 0.6 and r >= scored[0][0] - 0.05]
    hint = " did you mean " + " or ".join(repr(c) for c in close) + "?" if close else ""
    return UnknownModelError(f"unknown model {name!r};{hint} 'edgepipe models' lists them")


def model_info(name: str) -> dict[str, Any]:
    """Name, attention kind, description and (where known) default_epochs/default_lr of a model."""
    if name not in _REGISTRY:
        raise _unknown(name)
    return dict(_REGISTRY[name]["info"])


def create(name: str, *, num_classes: int = 10, in_chans: int = 1, img_size: int = 32, **kw) -> nn.Module:
    """Build registered model ``name`` with random weights (timm models: ``pipeline.timm_models``)."""
    if name not in _REGISTRY:
        raise _unknown(name)
    return _REGISTRY[name]["fn"](num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kw)


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple[int, ...] = (1, 1, 32, 32)) -> int:
    """Multiply-accumulates of one forward pass in eval mode (FLOPs / 2, as PyTorch counts them)."""
    from torch.utils.flop_counter import FlopCounterMode

    param = next(model.parameters(), None)
    x = torch.zeros(
        input_shape,
        device=param.device if param is not None else "cpu",
        dtype=param.dtype if param is not None else torch.float32,
    )
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2
