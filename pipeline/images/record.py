"""What a model records about its input and its data, the same way wherever the model came from.

Up to three facts, in its ONNX metadata (a checkpoint: in its config): ``edgepipe.preprocess``,
``edgepipe.class_names`` and ``edgepipe.data`` (the data it was made from and that data's split);
docs/data.md tells who writes them. A model written by an older edgepipe (its whole config under
``edgepipe.config``, a split as a list of indices) is refused with the command that makes it again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import EdgepipeError
from pipeline.preprocess import METADATA_KEY, Preprocess

CLASSES_KEY = "edgepipe.class_names"
DATA_KEY = "edgepipe.data"
_OLD_CONFIG_KEY = "edgepipe.config"  # what older versions wrote instead of the keys above


@dataclass(frozen=True)
class Record:
    """A model's preprocessing, class names, and the data it was made from with that data's split."""

    preprocess: Preprocess | None = None
    class_names: tuple[str, ...] | None = None
    data: dict[str, Any] | None = None  # {"source": spec, "sha256": identity, "split": Split.record}

    @property
    def source(self) -> str | None:
        return (self.data or {}).get("source")

    @property
    def split(self) -> dict[str, Any] | None:
        return (self.data or {}).get("split")

    @classmethod
    def of_onnx(cls, model, name: str | Path = "the model") -> Record:
        """The record in an ``onnx.ModelProto``'s metadata (empty for a model that records nothing)."""
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
        """Write this record into an ``onnx.ModelProto``'s metadata, replacing what was there under its keys."""
        values = {
            METADATA_KEY: self.preprocess.to_json() if self.preprocess else None,
            CLASSES_KEY: json.dumps(list(self.class_names)) if self.class_names else None,
            DATA_KEY: json.dumps(self.data, sort_keys=True) if self.data else None,
        }
        kept = [(p.key, p.value) for p in model.metadata_props if p.key not in values and p.key != _OLD_CONFIG_KEY]
        del model.metadata_props[:]
        for key, value in kept + [(key, value) for key, value in values.items() if value is not None]:
            model.metadata_props.add(key=key, value=value)
