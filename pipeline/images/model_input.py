"""What a model takes from the user's images: the preprocessing for its input, its classes, its outputs.

Every model is read the same way: its graph (a checkpoint: its recorded input shape and classes; channels,
layout and a static size come from it), its ``Record``, and the flags, parsed once into ``PreprocessFlags``
and merged by the one rule of docs/data.md. A ``Record`` is up to three facts, in ONNX metadata (a
checkpoint: in its config): ``edgepipe.preprocess``, ``edgepipe.class_names`` and ``edgepipe.data`` (the
data it was made from and that data's split). A model written by an older edgepipe (its whole config under
``edgepipe.config``, a split as a list of indices) is refused with the command that makes it again.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from pipeline.artifacts import Kind, atomic_output, write_manifest
from pipeline.digest import sha256_file
from pipeline.errors import EdgepipeError
from pipeline.onnxinfo import ModelInfo, TensorInfo, describe, load_model
from pipeline.precision import Precision
from pipeline.preprocess import EXAMPLE, METADATA_KEY, Preprocess, check_keys, parse_value
from pipeline.yamlfile import read_yaml

CLASSES_KEY = "edgepipe.class_names"
DATA_KEY = "edgepipe.data"
_OLD_CONFIG_KEY = "edgepipe.config"  # what older versions wrote instead of the keys above


@dataclass(frozen=True)
class Record:
    preprocess: Preprocess | None = None
    class_names: tuple[str, ...] | None = None
    data: dict[str, Any] | None = None  # {"source": spec, "sha256": identity, "split": Split.record}

    @property
    def source(self) -> Any:
        return (self.data or {}).get("source")

    @property
    def split(self) -> Any:
        return (self.data or {}).get("split")

    @classmethod
    def of_onnx(cls, model, name: str | Path = "the model") -> Record:
        metadata = {prop.key: prop.value for prop in model.metadata_props}
        if _OLD_CONFIG_KEY in metadata and DATA_KEY not in metadata:
            raise EdgepipeError(
                f"{Path(str(name)).name} was exported by an older edgepipe (its data and split are recorded the old way)",
                fix="export it again from its checkpoint with 'edgepipe export CHECKPOINT -o MODEL.onnx'",
            )
        preprocess = Preprocess.from_json(metadata[METADATA_KEY]) if METADATA_KEY in metadata else None
        classes = json.loads(metadata[CLASSES_KEY]) if CLASSES_KEY in metadata else None
        data = json.loads(metadata[DATA_KEY]) if DATA_KEY in metadata else None
        return cls(preprocess, tuple(classes) if classes else None, data)

    @classmethod
    def of_config(cls, config: dict[str, Any], name: str | Path = "the checkpoint") -> Record:
        split = config.get("split") or {}
        if "val_indices" in split or "preprocess" not in config:
            raise EdgepipeError(
                f"checkpoint {Path(str(name)).name} was written by an older edgepipe (its split is recorded as indices)",
                fix=f"train it again: 'edgepipe train --model {config.get('model', 'NAME')} --data {(config.get('data') or {}).get('source', 'DATA')} -o {Path(str(name)).name}'",
            )
        data = config.get("data") or {}
        return cls(
            Preprocess.from_dict(config["preprocess"]),
            tuple(config["class_names"]) if config.get("class_names") else None,
            {"source": data.get("source"), "sha256": data.get("sha256"), "split": split},
        )

    def store_in(self, model) -> None:
        """Into an ``onnx.ModelProto``'s metadata, replacing what was there under its keys."""
        values = {
            METADATA_KEY: self.preprocess.to_json() if self.preprocess else None,
            CLASSES_KEY: json.dumps(list(self.class_names)) if self.class_names else None,
            DATA_KEY: json.dumps(self.data, sort_keys=True) if self.data else None,
        }
        kept = [(p.key, p.value) for p in model.metadata_props if p.key not in values and p.key != _OLD_CONFIG_KEY]
        del model.metadata_props[:]
        for key, value in kept + [(key, value) for key, value in values.items() if value is not None]:
            model.metadata_props.add(key=key, value=value)


FLAG_KEYS = ("resize", "crop", "mean", "std", "channel_order", "interpolation", "layout")


@dataclass(frozen=True)
class PreprocessFlags:
    values: dict[str, Any] = field(default_factory=dict)  # flag key -> parsed value, only the flags given
    file: str | None = None
    file_values: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, file: str | Path | None = None, **flags: Any) -> PreprocessFlags:
        """Parse every given flag (``resize="256"`` ...) and read ``file``; what can be checked without
        the model is checked here, once."""
        unknown = sorted(set(flags) - set(FLAG_KEYS))
        if unknown:
            raise TypeError(f"unknown preprocessing flags {unknown}")
        values = {key: parse_value(key, value) for key, value in flags.items() if value is not None}
        file_values = read_preprocess_file(file) if file is not None else {}
        merged = {**file_values, **values}
        geometry = ("resize", "crop", "interpolation", "channel_order", "layout")
        # a crop larger than the resize, or an unknown name, fails here
        Preprocess.from_dict({key: merged[key] for key in geometry if merged.get(key) is not None})
        for key in ("mean", "std"):
            if merged.get(key) is not None:
                numbers = parse_value(key, merged[key])
                if len(numbers) not in (1, 3):
                    raise EdgepipeError(
                        f"{key} has {len(numbers)} values; images have 1 (grayscale) or 3 (colour) channels",
                        fix=f"give one value per channel, e.g. --{key} {EXAMPLE[key]}",
                    )
                Preprocess(**{key: numbers, "channels": len(numbers)})  # 0-255 units or a zero std fail here
        return cls(values, None if file is None else str(file), file_values)

    @property
    def given(self) -> bool:
        return bool(self.values) or self.file is not None

    def flag_names(self) -> list[str]:
        return [f"--{key.replace('_', '-')}" for key in self.values] + (["--preprocess"] if self.file else [])

    def resolve(self, info: ModelInfo, stored: Preprocess | None = None) -> Preprocess:
        """The preprocessing for a model with input ``info``: stored, then the file, then the flags."""
        channels = info.channels or 3
        input_hw = (info.height, info.width) if not info.dynamic_hw else None
        if not self.given and stored is None:
            preprocess = dataclasses.replace(Preprocess.default_for(input_hw, channels), layout=info.layout)
        else:
            values = {**(stored.to_dict() if stored else {}), **self.file_values, **self.values}
            values = {key: value for key, value in values.items() if value is not None}
            if "channels" in values and int(values["channels"]) != channels:
                raise EdgepipeError(
                    f"the preprocessing says {values['channels']} channels, the model's input has {channels}",
                    fix="drop 'channels' from the preprocessing file, it comes from the model",
                )
            values.update(channels=channels, layout=values.get("layout", info.layout))
            if values.get("resize") is None and values.get("crop") is None and input_hw:
                values["resize"] = list(input_hw)
            preprocess = Preprocess.from_dict(values)
        if preprocess.layout != info.layout:
            raise EdgepipeError(
                f"the preprocessing lays images out as {preprocess.layout.upper()}, but input '{info.input_name}' is "
                f"{info.layout.upper()} ({info.input.text()})",
                fix=f"pass --layout {info.layout}, or drop --layout",
            )
        preprocess.check_fits(input_hw)
        return preprocess


@dataclass(frozen=True)
class ModelInput:
    info: ModelInfo
    preprocess: Preprocess
    origin: str  # "default", "stored" (the model's record), "given" (flags or file), or "stored, then given"
    record: Record = Record()  # what the model records: preprocessing, class names, data and split
    name: str = "the model"  # the model's file name, for messages

    @classmethod
    def of_onnx(cls, model: str | Path | onnx.ModelProto, flags: PreprocessFlags | None = None) -> ModelInput:
        flags = flags or PreprocessFlags()
        proto = load_model(model)
        info = describe(proto, layout=flags.values.get("layout") or flags.file_values.get("layout"))
        name = Path(model).name if isinstance(model, (str, Path)) else "the model"
        return cls._made(info, Record.of_onnx(proto, name), flags, name)

    @classmethod
    def of_config(cls, config: dict[str, Any], flags: PreprocessFlags | None = None, name: str = "the checkpoint"):
        record = Record.of_config(config, name)
        logits = TensorInfo("logits", ("batch", len(config["class_names"])), "float32")
        info = ModelInfo(
            TensorInfo("input", ("batch", *config["input_shape"]), "float32"), "nchw", (logits,), 0, "pytorch"
        )
        return cls._made(info, record, flags or PreprocessFlags(), name)

    @classmethod
    def _made(cls, info: ModelInfo, record: Record, flags: PreprocessFlags, name: str) -> ModelInput:
        stored = record.preprocess
        origin = {(True, True): "stored, then given", (True, False): "stored", (False, True): "given"}
        return cls(info, flags.resolve(info, stored), origin.get((bool(stored), flags.given), "default"), record, name)

    def require_size(self) -> None:  # images of many sizes would reach a model with dynamic height/width
        if self.info.dynamic_hw and self.preprocess.output_hw is None:
            raise EdgepipeError(
                f"input '{self.info.input_name}' has dynamic height/width ({self.info.input.text()}) and the preprocessing gives no fixed size",
                fix="pass --resize HxW, or --resize N with --crop N (e.g. --resize 256 --crop 224), so that every image has one size",
            )

    @property
    def num_classes(self) -> int | None:
        """The classes of a classifier (first output N x C with a static C); None for other outputs."""
        first = self.info.outputs[0]
        return first.shape[-1] if first.rank == 2 and isinstance(first.shape[-1], int) and first.shape[-1] > 0 else None

    @property
    def sample_shape(self) -> tuple[int, ...]:  # one preprocessed image in the model's layout
        height, width = self.preprocess.output_hw or (None, None)
        return self.info.sample_shape(height, width)

    @property
    def fixed_size(self) -> tuple[int, int] | None:
        """Height and width a model with dynamic ones is converted, calibrated and measured at: the preprocessing's."""
        return self.preprocess.output_hw if self.info.dynamic_hw else None

    def profile_shapes(self, batches: tuple[int, int, int] = (1, 8, 32)) -> dict[str, str] | None:
        """TensorRT profiles (trtexec syntax) for a model with dynamic height/width, at the preprocessing's size."""
        if self.fixed_size is None:
            return None
        sample = "x".join(str(d) for d in self.sample_shape)
        batches = (self.info.batch,) * 3 if self.info.batch else batches
        return {key: f"{self.info.input_name}:{batch}x{sample}" for key, batch in zip(("min", "opt", "max"), batches)}

    def write_onnx(self, source: str | Path, output: str | Path, record: Record | None = None) -> Path:
        """``source`` with ``record`` (default: this preprocessing) stored in its metadata, and its manifest.
        FP16/INT8 models made from it carry the record over, so later stages need no flags."""
        model = load_model(source)
        record = record or Record(self.preprocess)
        record.store_in(model)
        with atomic_output(output) as tmp:
            onnx.save(model, str(tmp))
        write_manifest(
            output,
            Kind.ONNX,
            inputs={"onnx": sha256_file(source)},
            params=self.import_settings(record.class_names),
            precision=Precision.FP32,
            source=str(source),
        )
        return Path(output)

    def import_settings(self, class_names: tuple[str, ...] | None) -> dict[str, Any]:  # besides the ONNX
        return {"precision": "fp32", "preprocess": self.preprocess.to_dict(), "class_names": class_names}

    def describe(self) -> str:
        if self.origin == "default":
            return self.preprocess.describe()
        flags = ", with the flags given" if "given" in self.origin else ""
        where = f" (stored in the model{flags})" if "stored" in self.origin else ""
        return f"preprocessing{where}: {self.preprocess.describe()}"

    def summary(self) -> dict[str, Any]:  # what manifests and results store of it
        return {
            "preprocess": self.preprocess.to_dict(),
            "origin": self.origin,
            "input": self.info.input_name,
            "layout": self.info.layout,
            "sample_shape": list(self.sample_shape) if self.preprocess.output_hw or not self.info.dynamic_hw else None,
        }


def read_preprocess_file(path: str | Path) -> dict[str, Any]:
    """The keys of a --preprocess YAML or JSON file (JSON is read as YAML, which it is a subset of)."""
    fix = "write one key per line, e.g. 'resize: 256', 'crop: 224', 'mean: [0.485, 0.456, 0.406]' (or the same as a JSON object)"
    values = read_yaml(
        path, "preprocessing file", fix, missing_fix="pass --preprocess with the path of a YAML or JSON file"
    )
    if not isinstance(values, dict):
        raise EdgepipeError(
            f"preprocessing file {path} holds {type(values).__name__ if values is not None else 'nothing'}, not key: value pairs",
            fix=fix,
        )
    values = {str(key).replace("-", "_"): value for key, value in values.items()}
    check_keys(values, f"preprocessing file {path}")
    return values
