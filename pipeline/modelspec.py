"""Which PyTorch model to use: a zoo name, ``timm:NAME``, ``package.module:callable`` or ``file.py:callable``.
A checkpoint records the spec so later stages need no flags, but user code is never imported on a
checkpoint's word alone (``load_recorded``): a checkpoint from elsewhere could name any file, and importing
a file runs it."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from pipeline.digest import sha256_file
from pipeline.errors import EdgepipeError
from pipeline.timm_models import TIMM_PREFIX, create_timm, timm_data_config, timm_default_input_size
from pipeline.user_code import call_user_callable, error_line

KINDS = ("zoo", "timm", "module", "file")
_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")  # YAML 1.1 reads "1e-3" as a string


def parse_model_args(pairs: Sequence[str]) -> dict[str, Any]:
    """``["width=32", "drop=0.1", "se=true", "act=relu"]`` -> keyword arguments (YAML scalars)."""
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise EdgepipeError(
                f"--model-arg {pair!r} is not key=value", fix="pass --model-arg NAME=VALUE, e.g. --model-arg width=32"
            )
        if key in args:
            raise EdgepipeError(f"--model-arg {key} is given twice", fix=f"pass --model-arg {key}=... once")
        try:
            value = yaml.safe_load(text) if text.strip() else text
        except yaml.YAMLError:
            value = text
        if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
            value = float(value)
        if not (value is None or isinstance(value, (bool, int, float, str))):
            raise EdgepipeError(
                f"--model-arg {key}={text} is a {type(value).__name__}, not a number, bool or string",
                fix=f"quote it to pass a string (--model-arg '{key}=\"{text}\"'), or set it in the callable",
            )
        args[key] = value
    return args


@dataclass(frozen=True)
class ModelSpec:
    text: str
    kind: str  # zoo, timm, module or file
    target: str  # zoo name, timm name, dotted module, or absolute path of the .py file
    attr: str | None = None  # the callable inside the module or file
    args: dict[str, Any] = field(default_factory=dict)
    sha256: str | None = None  # of the .py file, for a file spec

    @property
    def is_user_code(self) -> bool:  # building the model imports (runs) the user's module or file
        return self.kind in ("module", "file")

    @classmethod
    def parse(cls, text: str, model_args: Sequence[str] | dict[str, Any] = ()) -> ModelSpec:
        """A file spec is resolved to an absolute path and hashed now."""
        text = (text or "").strip()
        args = dict(model_args) if isinstance(model_args, dict) else parse_model_args(model_args)
        fix = "pass a zoo name ('edgepipe models'), timm:NAME, package.module:callable or path/to/file.py:callable"
        if not text:
            raise EdgepipeError("--model is empty", fix=fix)
        if text.startswith(TIMM_PREFIX):
            name = text[len(TIMM_PREFIX) :]
            if not name:
                raise EdgepipeError(
                    f"--model {text} names no timm model", fix="pass --model timm:NAME, e.g. timm:seresnet18"
                )
            return cls(text, "timm", name, args=args)
        where, sep, attr = text.rpartition(":")
        if not sep:
            if text.endswith(".py") or "/" in text or os.sep in text or "." in text:
                raise EdgepipeError(
                    f"--model {text} names no callable",
                    fix=f"pass --model {text}:NAME, the function or class that returns the model",
                )
            return cls(text, "zoo", text, args=args)
        if not attr or not all(part.isidentifier() for part in attr.split(".")):
            raise EdgepipeError(f"--model {text}: {attr!r} is not a Python name", fix=fix)
        if where.endswith(".py") or "/" in where or os.sep in where:
            path = Path(where).expanduser().resolve()
            if not path.is_file():
                raise EdgepipeError(
                    f"model file {where} does not exist",
                    fix="pass --model path/to/file.py:callable with the path to your model file",
                )
            return cls(text, "file", str(path), attr, args, sha256_file(path))
        if not all(part.isidentifier() for part in where.split(".")):
            raise EdgepipeError(f"--model {text}: {where!r} is not a module name or a .py file", fix=fix)
        return cls(text, "module", where, attr, args)

    def to_json(self) -> dict[str, Any]:
        file = {"file": self.target, "sha256": self.sha256} if self.kind == "file" else {}
        return {"spec": self.text, "kind": self.kind, "args": dict(self.args), **file}

    @classmethod
    def from_json(cls, blob: dict[str, Any] | str) -> ModelSpec:
        """The spec a checkpoint recorded (or a plain zoo name); nothing is read or imported here."""
        if isinstance(blob, str):
            blob = {"spec": blob}
        try:
            text, kind, args = str(blob["spec"]), blob.get("kind"), dict(blob.get("args") or {})
            if kind not in (None, *KINDS) or (kind == "file" and not blob.get("file")):
                raise ValueError(kind)
        except (AttributeError, KeyError, TypeError, ValueError):
            raise EdgepipeError(
                f"the recorded model spec {str(blob)[:120]} is not one edgepipe wrote",
                fix="pass --model and --weights instead",
            ) from None
        if kind == "file":
            return cls(text, "file", str(blob["file"]), text.rpartition(":")[2], args, blob.get("sha256"))
        if kind == "module" or (kind is None and ":" in text and not text.startswith(TIMM_PREFIX)):
            where, _, attr = text.rpartition(":")
            return cls(text, "module", where, attr, args)
        return cls.parse(text, args)

    @property
    def canonical(self) -> str:
        """The --model text that names this spec from any folder (a file by its absolute path)."""
        return f"{self.target}:{self.attr}" if self.kind == "file" else self.text

    def same_model(self, other: ModelSpec) -> bool:
        """Whether ``other`` names the same callable (a moved but unchanged file counts as the same)."""
        moved = self.kind == "file" and self.sha256 is not None and self.sha256 == other.sha256
        return (self.kind, self.attr) == (other.kind, other.attr) and (self.target == other.target or moved)


@dataclass(frozen=True)
class ModelCode:
    """What a stage may import to rebuild a checkpoint's model: ``given`` is --model named again
    (with its --model-arg values), ``trust`` is --trust-model-code. The default allows no user code."""

    given: ModelSpec | None = None
    trust: bool = False


def load_recorded(spec_json: dict[str, Any] | str, given: ModelSpec | None, trust_model_code: bool) -> ModelSpec:
    """The spec to build for a checkpoint that recorded ``spec_json``; imports nothing. User code is used
    only when ``--model`` names it again (``given``, its --model-arg values on top) or with
    ``--trust-model-code``; a recorded file must still hold the code it held when recorded."""
    recorded = ModelSpec.from_json(spec_json)
    if given is not None:
        if not given.same_model(recorded):
            raise EdgepipeError(
                f"the checkpoint is for model {recorded.canonical}, not {given.canonical}",
                fix=f"drop --model or pass --model {recorded.canonical}",
            )
        return replace(given, args={**recorded.args, **given.args})
    if not recorded.is_user_code:
        return recorded
    if not trust_model_code:
        raise EdgepipeError(
            f"the checkpoint names user code ({recorded.canonical}), which edgepipe does not import on a checkpoint's word",
            fix=f"pass --model {recorded.canonical} to use that code, or --trust-model-code if you trust where the checkpoint came from",
        )
    if recorded.kind == "file":
        path = Path(recorded.target)
        if not path.is_file():
            raise EdgepipeError(
                f"model file {path} recorded in the checkpoint does not exist",
                fix="pass --model path/to/file.py:callable with its new path",
            )
        if recorded.sha256 and sha256_file(path) != recorded.sha256:
            raise EdgepipeError(
                f"model file {path} has changed since the checkpoint recorded it (sha256 differs)",
                fix=f"pass --model {recorded.canonical} to use the file as it is now",
            )
    return recorded


def build(spec: ModelSpec, defaults: dict[str, Any] | None = None):
    """The model the spec names, with random weights. ``defaults`` (num_classes, in_chans, img_size) yield
    to the spec's --model-arg values; a user callable gets only the defaults it takes."""
    from torch import nn  # torch only where a model is built

    defaults = dict(defaults or {})
    if spec.kind == "zoo":
        import models  # imports torch: only stages that build a model need it

        try:
            model = models.create(spec.target, **{**defaults, **spec.args})
        except models.UnknownModelError as exc:
            fix = "run 'edgepipe models' for the list, or pass --model package.module:callable"
            raise EdgepipeError(str(exc).rstrip("."), fix=fix) from None
    elif spec.kind == "timm":
        defaults.pop("img_size", None)  # timm models keep their own input size
        model = create_timm(spec.target, {**defaults, **spec.args})
    else:
        model = call_user_callable(spec, defaults)
    if not isinstance(model, nn.Module):
        raise EdgepipeError(
            f"{spec.text} returned a {type(model).__name__}, not a torch.nn.Module",
            fix="make the callable return the model itself (an nn.Module instance)",
        )
    return model


def channels_of(model) -> int | None:
    """The channels a module takes: its first layer's, when that is a convolution (None: not known)."""
    from torch import nn  # only where a model is built

    conv = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    return conv.in_channels if isinstance(conv, nn.Conv2d) else None


def input_size(model_or_spec) -> tuple[int, int, int] | None:
    """The model's own input size (C, H, W): timm's data config, a zoo spec's img_size, or an ``input_size``
    or ``img_size`` a module declares; None: the data decides."""
    if isinstance(model_or_spec, ModelSpec):
        spec = model_or_spec
        if spec.kind == "timm":
            return timm_default_input_size(spec.target, spec.args.get("in_chans"))
        if spec.kind == "zoo" and "img_size" in spec.args:
            size = int(spec.args["img_size"])
            return (int(spec.args.get("in_chans", 1)), size, size)
        return None
    model = model_or_spec
    if getattr(model, "pretrained_cfg", None) is not None:  # a timm model
        return tuple(timm_data_config(model)["input_size"])  # type: ignore[return-value]
    declared = getattr(model, "input_size", None)
    if isinstance(declared, (tuple, list)) and len(declared) == 3:
        return tuple(int(v) for v in declared)  # type: ignore[return-value]
    img_size, channels = getattr(model, "img_size", None), channels_of(model)
    size = (img_size, img_size) if isinstance(img_size, int) else img_size
    if channels and isinstance(size, (tuple, list)) and len(size) == 2:
        return (channels, int(size[0]), int(size[1]))
    return None


def probe(model, size: tuple[int, int, int]) -> tuple[int, ...]:
    import torch  # only where a model runs

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *size))
    except Exception as exc:
        raise EdgepipeError(
            f"the model cannot take input {'x'.join(map(str, size))}: its forward pass raised {error_line(exc)}",
            fix="pass --input-size with the size the model was built for, e.g. --input-size 3x224x224",
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        what = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise EdgepipeError(
            f"the model's forward pass returns {what}, not logits of shape (batch, classes)",
            fix="return one logits tensor from forward (wrap the model to pick it)",
        )
    return tuple(out.shape)
