"""What a sweep is asked for: models (names, or a models file), precisions and target GPUs, all checked
before a cluster is touched, so bad input ends as one line and nothing is submitted."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pipeline.sweep.adapter as edgepipe
from pipeline.defaults import BUDGET_DEFAULT, DEFAULT_BENCH_BATCHES
from pipeline.errors import EdgepipeError
from pipeline.precision import Precision
from pipeline.sweep.cluster import DEFAULT_RETRIES, parse_target, target_name
from pipeline.yamlfile import read_yaml


@dataclass(frozen=True)
class SweepModel:
    """One model of the sweep: a zoo name (or ``timm:NAME``), or a name for a checkpoint or ONNX model of your own."""

    name: str
    checkpoint: str | None = None
    onnx: str | None = None
    epochs: int | None = None
    data: str | None = None  # this model's images (default: the sweep's --data)
    labels: str | None = None  # a labels file, for an ONNX edgepipe did not export
    preprocess: str | None = None  # a preprocessing file (resize, crop, mean, std ...), for such an ONNX


MODEL_KEYS = set(SweepModel.__annotations__)  # what an entry of a models file may give


@dataclass(frozen=True)
class SweepSettings:
    """How the sweep prepares each model and measures each cell: ``edgepipe sweep``'s flags, parsed once."""

    address: str = "local"  # "local" (embedded Ray of ``resources``/``num_cpus``), "auto" or a head's HOST:PORT
    data: str | None = None
    epochs: int | None = None
    seed: int = 0
    max_drop: float | None | str = BUDGET_DEFAULT  # top-1 points; None: plain PTQ; "default": edgepipe run's own
    bench_batches: tuple[int, ...] = DEFAULT_BENCH_BATCHES
    bench_seconds: float = 1.0
    strict: bool = False
    force: bool = False
    retries: int = DEFAULT_RETRIES
    resources: dict[str, float] | None = None  # default: this machine's GPU, or the TensorRT-RTX targets it builds
    num_cpus: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "bench_batches", tuple(self.bench_batches))

    def run_settings(self, model: SweepModel) -> dict[str, Any]:
        """``edgepipe run``'s settings for one model's target-independent stages (no engines)."""
        shared = ("seed", "max_drop", "bench_batches", "bench_seconds", "strict", "force")
        mine = {"data": model.data or self.data, "epochs": model.epochs or self.epochs, "engines": False}
        return {**{key: getattr(self, key) for key in shared}, **mine}


def load_models_file(path: str | Path) -> dict[str, Any]:
    """A YAML file: ``models:`` (names, or {name, checkpoint|onnx, epochs, data, labels, preprocess}), optional ``precisions``/``targets``."""
    path, fix = Path(path), "write 'models: [se_resnet, cbam_resnet]'"
    raw = read_yaml(
        path, "models file", fix=fix, missing_fix="pass a YAML file with a 'models:' list, or use --models A,B"
    )
    raw = {"models": raw} if isinstance(raw, list) else raw
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), list) or not raw["models"]:
        raise EdgepipeError(f"models file {path} has no 'models:' list", fix=fix)
    unknown = set(raw) - {"models", "precisions", "targets"}
    if unknown:
        raise EdgepipeError(
            f"models file {path} has unknown key {sorted(unknown)[0]!r}", fix="use only models, precisions and targets"
        )
    specs = [_spec(entry, path) for entry in raw["models"]]
    return {"models": specs, "precisions": as_list(raw.get("precisions")), "targets": as_list(raw.get("targets"))}


def _spec(entry: Any, source: Path) -> SweepModel:
    if isinstance(entry, str):
        return SweepModel(entry)
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or set(entry) - MODEL_KEYS:
        raise EdgepipeError(
            f"models file {source} has an entry {entry!r} that is not a model",
            fix="write a name, or {name: N, checkpoint: PATH} / {name: N, onnx: PATH, data: DIR, labels: FILE, preprocess: FILE} / {name: N, epochs: E}",
        )
    epochs = entry.get("epochs")
    if epochs is not None and (not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1):
        raise EdgepipeError(
            f"models file {source}: epochs of {entry['name']!r} is {epochs!r}, not a number of epochs",
            fix="write e.g. 'epochs: 20'",
        )
    paths = {
        k: str((source.parent / entry[k]).resolve())
        for k in ("checkpoint", "onnx", "data", "labels", "preprocess")
        if entry.get(k)
    }
    if entry.get("data") == edgepipe.DIGITS:  # the bundled data is a name, not a path
        paths["data"] = edgepipe.DIGITS
    return SweepModel(entry["name"], epochs=epochs, **paths)


def as_list(value: Any) -> list[str] | None:
    """ "a, b" (or a list) -> ["a", "b"]; None stays None."""
    if value is None:
        return None
    return [str(v).strip() for v in (value.split(",") if isinstance(value, str) else value) if str(v).strip()]


def check_models(specs: list[SweepModel], where: str = "--models") -> list[SweepModel]:
    """Zoo names must exist (close names suggested); own models must point at a file."""
    if not specs:
        raise EdgepipeError("no model to sweep", fix="pass --models A,B or --models-file sweep.yaml")
    known = edgepipe.model_names()
    seen = set()
    for spec in specs:
        if spec.name in seen:
            raise EdgepipeError(f"{where} names {spec.name!r} twice", fix="give each model of the sweep its own name")
        seen.add(spec.name)
        own = spec.checkpoint or spec.onnx
        for path in (own, spec.labels, spec.preprocess, spec.data if spec.data != edgepipe.DIGITS else None):
            if path and not Path(path).exists():
                raise EdgepipeError(
                    f"{where}: model {spec.name!r} points at {path}, which does not exist",
                    fix="correct the path (relative to the models file)",
                )
        if not own and spec.name not in known and not spec.name.startswith("timm:"):
            close = _close_names(spec.name, known)
            hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
            raise EdgepipeError(
                f"{where} names unknown model {spec.name!r}{hint}",
                fix="'edgepipe models' lists the zoo; a model of your own needs 'checkpoint:' or 'onnx:' in the models file",
            )
    return specs


def _close_names(name: str, known: list[str]) -> list[str]:
    """The best match, and any nearly as good (two equally likely typos), as `edgepipe models` does."""
    scored = sorted(((difflib.SequenceMatcher(None, name, k).ratio(), k) for k in known), reverse=True)
    return [k for ratio, k in scored[:3] if ratio >= 0.6 and ratio >= scored[0][0] - 0.05]


def resolve(
    models: list[Any] | None, models_file: str | Path | None, precisions, targets
) -> tuple[list[SweepModel], tuple[Precision, ...], list[str] | None]:
    """(models, precisions, targets or None for "every advertised target"), all checked."""
    from_file = load_models_file(models_file) if models_file else {"models": [], "precisions": None, "targets": None}
    specs = [m if isinstance(m, SweepModel) else SweepModel(m) for m in (models or [])] + from_file["models"]
    specs = check_models(specs, where=f"models file {models_file}" if models_file and not models else "--models")
    chosen = edgepipe.parse_list(list(precisions or from_file["precisions"] or edgepipe.PRECISIONS))
    wanted = targets or from_file["targets"]  # each checked, as canonical sm_XY names (sm_89, SM_120 ...)
    return specs, chosen, list(dict.fromkeys(target_name(parse_target(t)) for t in wanted)) if wanted else None
