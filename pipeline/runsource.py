"""What `edgepipe run` starts from: a model to train, a checkpoint or an ONNX, checked before any write.

A model to train is a ``--model`` spec (zoo, ``timm:NAME``, ``module:callable``, ``file.py:callable``)
with its ``--weights`` and ``--input-size``. A checkpoint that names the user's own code is refused
here, before the run directory is made and before anything is imported, unless ``--model`` names
that code again or ``--trust-model-code`` is given.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.checkpoint import check_model_code, config_of, model_info
from pipeline.defaults import DEFAULT_MODEL
from pipeline.errors import EdgepipeError
from pipeline.images import ImageSource, ModelInput, PreprocessFlags, refuse_for_recorded
from pipeline.images import open_source as open_images
from pipeline.model_weights import read_state_dict
from pipeline.modelspec import ModelCode, ModelSpec
from pipeline.onnxfile import CONFIG_KEY, load_onnx, read_metadata
from pipeline.user_code import find_user_callable


@dataclass
class Source:
    """What the run starts from, checked before anything is written."""

    start: str  # "training", "checkpoint" or "onnx"
    file: Path | None  # the checkpoint or ONNX given
    name: str  # the model's spec (zoo name, timm:NAME, module:callable, file.py:callable), else the file's name
    data: str | None  # the dataset it was trained on, as recorded
    model_input: ModelInput | None = None  # an ONNX edgepipe did not export: its input and preprocessing
    images: ImageSource | None = None  # and the user's images for it (--data), listed
    spec: ModelSpec | None = None  # the model to train
    code: ModelCode = field(default_factory=ModelCode)  # the user code stages may import to rebuild it

    @property
    def folder_name(self) -> str:
        """The default run directory's name: the model's callable, zoo or timm name, else the file's stem."""
        if self.spec is not None:
            name = self.spec.attr if self.spec.is_user_code else self.spec.target
            return re.sub(r"[^0-9A-Za-z_.-]", "_", name)
        return self.file.stem if self.file else self.name

    def need_images(self) -> ImageSource:
        if self.images is None:
            raise EdgepipeError(
                f"{self.name} has no edgepipe metadata, so there is no recorded data to calibrate or validate it on",
                fix="pass --data with your images (an ImageFolder, a folder of images or an .npz), and --labels FILE if the folders are classes",
            )
        return self.images


def open_source(
    model: str | ModelSpec | None,
    checkpoint: str | Path | None,
    onnx_model: str | Path | None,
    data: str | None = None,
    labels: str | Path | None = None,
    preprocess: PreprocessFlags | None = None,
    code: ModelCode | None = None,
    weights: str | Path | None = None,
) -> Source:
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
    if onnx_model and CONFIG_KEY not in read_metadata(load_onnx(onnx_model)):
        model_input = ModelInput.of_onnx(onnx_model, preprocess)
        found = open_images(data, labels=labels, num_classes=model_input.num_classes) if data else None
        return Source("onnx", Path(onnx_model), Path(onnx_model).name, None, model_input, found)
    refuse_for_recorded(checkpoint or onnx_model or (spec and spec.text) or DEFAULT_MODEL, preprocess, labels)
    if checkpoint:
        check_model_code(checkpoint, code)  # user code refused here, with nothing imported
        config = config_of(checkpoint)
        return Source("checkpoint", Path(checkpoint), config["model"], config["data"]["source"], code=code)
    if onnx_model:
        metadata = read_metadata(load_onnx(onnx_model))
        config = json.loads(metadata[CONFIG_KEY]) if CONFIG_KEY in metadata else {}
        return Source(
            "onnx",
            Path(onnx_model),
            metadata.get("edgepipe.model") or Path(onnx_model).name,
            (config.get("data") or {}).get("source"),
        )
    spec = spec or ModelSpec.parse(DEFAULT_MODEL)
    model_info(spec.text)  # an unknown zoo name is refused here
    if (
        spec.is_user_code
    ):  # named on the command line, so importing it is consented; a module that does not import is refused here
        find_user_callable(spec.kind, spec.target, spec.attr, spec.sha256, spec.text)
    if weights:
        read_state_dict(weights)  # a missing, unreadable or pickled weights file is refused here
    return Source("training", None, spec.text, None, spec=spec, code=code)
