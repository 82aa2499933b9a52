"""What `edgepipe run` starts from: a model to train, a checkpoint or an ONNX, checked before any write.
A checkpoint naming the user's own code is refused here, before the run directory is made or anything
is imported, unless ``--model`` names that code again or ``--trust-model-code``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.checkpoint import check_model_code, config_of, model_info
from pipeline.defaults import DEFAULT_MODEL
from pipeline.errors import EdgepipeError
from pipeline.images import DIGITS, ImageSource, ModelData, ModelInput, PreprocessFlags, open_source
from pipeline.model_weights import read_state_dict
from pipeline.modelspec import ModelCode, ModelSpec
from pipeline.onnxfile import load_onnx, read_metadata
from pipeline.user_code import find_user_callable


@dataclass
class RunStart:
    """What the run starts from, checked before anything is written."""

    start: str  # "training", "checkpoint" or "onnx"
    file: Path | None  # the checkpoint or ONNX given
    name: str  # the model's spec (zoo name, timm:NAME, module:callable, file.py:callable), else the file's name
    model_input: ModelInput | None = None  # what the checkpoint or ONNX takes and records, with the flags
    model_data: ModelData | None = None  # and its images (--data, or what it records), listed and split
    images: ImageSource | None = None  # the images the run works on, listed
    spec: ModelSpec | None = None  # the model to train
    code: ModelCode = field(default_factory=ModelCode)  # the user code stages may import to rebuild it

    @property
    def folder_name(self) -> str:
        """The default run directory's name: the model's callable, zoo or timm name, else the file's stem."""
        if self.spec is not None:
            name = self.spec.attr if self.spec.is_user_code else self.spec.target
            return re.sub(r"[^0-9A-Za-z_.-]", "_", name)
        return self.file.stem if self.file else self.name


def open_start(
    model: str | ModelSpec | None,
    checkpoint: str | Path | None,
    onnx_model: str | Path | None,
    data: str | None = None,
    labels: str | Path | None = None,
    preprocess: PreprocessFlags | None = None,
    code: ModelCode | None = None,
    weights: str | Path | None = None,
) -> RunStart:
    """The run's primary input, or one error (missing, unreadable, unknown model, untrusted code, bad data or flags) before any write."""
    spec = ModelSpec.parse(model) if isinstance(model, str) else model
    code = code or ModelCode(spec)
    if sum(bool(s) for s in (checkpoint, onnx_model)) > 1 or (spec and onnx_model):
        raise EdgepipeError(
            "--model, --checkpoint and --onnx are alternatives (--model with --checkpoint only names its code again)",
            fix="pass only one of them",
        )
    if weights and (checkpoint or onnx_model):
        raise EdgepipeError(
            "--weights is for a model the run builds from --model",
            fix="drop --weights: the checkpoint or ONNX holds its weights",
        )
    if onnx_model:  # the import stage stores the merged record in the run's copy
        model_input = ModelInput.of_onnx(onnx_model, preprocess)
        found = ModelData.of(model_input, data, labels) if data or model_input.record.source else None
        name = read_metadata(load_onnx(onnx_model)).get("edgepipe.model") or Path(onnx_model).name
        return RunStart("onnx", Path(onnx_model), name, model_input, found, found and found.source)
    given = (preprocess.flag_names() if preprocess else []) + (["--labels"] if labels is not None else [])
    if given:  # export records the checkpoint's own preprocessing and classes
        raise EdgepipeError(
            f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to a run from --onnx; a model the run trains or exports records its own",
            fix=f"drop {', '.join(given)}",
        )
    if checkpoint:
        check_model_code(checkpoint, code)  # user code refused here, with nothing imported
        config = config_of(checkpoint)
        model_input = ModelInput.of_config(config, name=Path(checkpoint).name)
        found = ModelData.of(model_input, data)
        return RunStart("checkpoint", Path(checkpoint), config["model"], model_input, found, found.source, code=code)
    spec = spec or ModelSpec.parse(DEFAULT_MODEL)
    model_info(spec.text)  # an unknown zoo name is refused here
    if spec.is_user_code:  # named on the command line, so importing it is consented; refused here if it fails
        find_user_callable(spec)
    if weights:
        read_state_dict(weights)  # a missing, unreadable or pickled weights file is refused here
    return RunStart("training", None, spec.text, images=open_source(data or DIGITS), spec=spec, code=code)
