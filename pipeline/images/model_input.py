"""What a model takes from the user's images: the preprocessing for its input, its classes, its outputs.

Every model is read the same way: its graph (a checkpoint: its recorded input shape and classes), its
``Record``, and the flags, parsed once into ``PreprocessFlags`` and merged by the one rule of
docs/data.md. With no preprocessing at all, images are resized to the model's static input size and
scaled to [0, 1], and ``describe`` says so. Channels, layout and a static size come from the graph.

    flags = PreprocessFlags.parse(resize="256", crop="224", mean="0.485,0.456,0.406", std="0.229,0.224,0.225")
    model_input = ModelInput.of_onnx("classifier.onnx", flags)
    model_input.preprocess           # a Preprocess in the model's layout, checked against its input
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from pipeline.artifacts import Kind, atomic_output, write_manifest
from pipeline.digest import sha256_file
from pipeline.errors import EdgepipeError
from pipeline.images.record import Record
from pipeline.onnxinfo import ModelInfo, TensorInfo, describe, load_model
from pipeline.precision import Precision
from pipeline.preprocess import Preprocess
from pipeline.preprocess_options import EXAMPLE, check_keys, parse_value
from pipeline.yamlfile import read_yaml

FLAG_KEYS = ("resize", "crop", "mean", "std", "channel_order", "interpolation", "layout")


@dataclass(frozen=True)
class PreprocessFlags:
    """The preprocessing a user gave on the command line (each value parsed), and the file's keys."""

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
    """A model's image input (``info``), the preprocessing that feeds it, and its classes when it is a classifier."""

    info: ModelInfo
    preprocess: Preprocess
    origin: str  # "default", "stored" (the model's record), "given" (flags or file), or "stored, then given"
    record: Record = Record()  # what the model records: preprocessing, class names, data and split
    name: str = "the model"  # the model's file name, for messages

    @classmethod
    def of_onnx(cls, model: str | Path | onnx.ModelProto, flags: PreprocessFlags | None = None) -> ModelInput:
        """The input of any single-image-input ONNX model and its preprocessing (stored, file, flags, or default)."""
        flags = flags or PreprocessFlags()
        proto = load_model(model)
        info = describe(proto, layout=flags.values.get("layout") or flags.file_values.get("layout"))
        name = Path(model).name if isinstance(model, (str, Path)) else "the model"
        return cls._made(info, Record.of_onnx(proto, name), flags, name)

    @classmethod
    def of_config(cls, config: dict[str, Any], flags: PreprocessFlags | None = None, name: str = "the checkpoint"):
        """The input of an edgepipe checkpoint: its recorded NCHW input shape, classes and record."""
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

    def require_size(self) -> None:
        """Raise when images of many sizes would reach a model with dynamic height/width: no fixed size given."""
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
    def sample_shape(self) -> tuple[int, ...]:
        """One preprocessed image in the model's layout: (C, H, W) or (H, W, C)."""
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

    def import_settings(self, class_names: tuple[str, ...] | None) -> dict[str, Any]:
        """What an imported copy of the model is made with besides the ONNX: its preprocessing and class names."""
        return {"precision": "fp32", "preprocess": self.preprocess.to_dict(), "class_names": class_names}

    def describe(self) -> str:
        """One line for the user, e.g. 'no preprocessing given: images are resized to 224x224 and scaled to [0, 1]'."""
        if self.origin == "default":
            return self.preprocess.describe()
        where = {
            "stored": " (stored in the model)",
            "stored, then given": " (stored in the model, with the flags given)",
        }
        return f"preprocessing{where.get(self.origin, '')}: {self.preprocess.describe()}"

    def summary(self) -> dict[str, Any]:
        """What manifests and results store of it."""
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
