"""The one question every stage asks: what does this model record, and what did the user add? ``ModelInput``
answers it for any model; ``ModelData.of`` adds the images and their split (docs/data.md). Calibration
draws from the pool, checks and validation judge on the held-out part."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.artifacts import read_manifest
from pipeline.errors import EdgepipeError
from pipeline.images.kinds import open_source
from pipeline.images.model_input import ModelInput, Record
from pipeline.images.source import SPLIT_SEED, VAL_FRACTION, ImageSource, Split
from pipeline.images.stream import BatchStream

DATA_FIX = "pass --data with your images (an ImageFolder, a folder of images or an .npz with x), and --labels FILE if the folders are classes"


@dataclass(frozen=True)
class ModelData:
    model_input: ModelInput
    source: ImageSource
    split: Split
    recorded: bool  # the split is the one the model records (the images are the data it was made from)

    @classmethod
    def of(cls, model_input: ModelInput, data: str | None = None, labels: str | Path | None = None) -> ModelData:
        record = model_input.record
        spec = data or record.source
        if spec is None:
            raise EdgepipeError(
                f"{model_input.name} records no data, so there are no images to calibrate or validate it on",
                fix=DATA_FIX,
            )
        names = None if labels is not None else record.class_names
        source = open_source(spec, labels=labels, num_classes=model_input.num_classes, names=names)
        if source.preprocessed and "given" in model_input.origin:
            raise EdgepipeError(
                f"the preprocessing flags apply to pixels; {Path(source.spec).name} holds inputs, already preprocessed for the model",
                fix="drop the preprocessing flags, or save the pixels as x",
            )
        if not source.preprocessed:
            model_input.require_size()
        if record.split and record.split.get("source_sha256") == source.sha256:
            return cls(model_input, source, source.redraw(record.split), True)
        return cls(model_input, source, source.split(seed=SPLIT_SEED, val_fraction=VAL_FRACTION), False)

    @property
    def labelled(self) -> bool:  # the images have labels the model's first output can be scored on
        return self.source.labelled and self.model_input.num_classes is not None

    def draw(self, num: int, seed: int = 0, held_out: bool = False) -> np.ndarray:
        """Up to ``num`` indices of the pool (or the held-out part), seeded, class by class in turns."""
        return self.source.draw(self.split.held_out if held_out else self.split.pool, num, seed=seed)

    def batches(self, indices=None, **options: Any) -> BatchStream:
        """``indices`` (default: the held-out part) through the model's preprocessing, batch by batch."""
        indices = self.split.held_out if indices is None else indices
        return self.source.batches(self.model_input.preprocess, indices, **options)

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """The model's class names: the images' (through ``--labels``) when labelled, else what it records."""
        return tuple(self.source.class_names) if self.labelled else self.model_input.record.class_names

    def record(self) -> Record:
        """The model's record with these images and their split: what a conversion given flags stores."""
        data = {"source": self.source.spec, "sha256": self.source.sha256, "split": self.split.record}
        return Record(self.model_input.preprocess, self.class_names, data)

    def judged(self, split: str | dict[str, Any] = "auto", artifacts=()) -> tuple[np.ndarray, dict[str, Any]]:
        """The indices validate judges on, and what they are: the held-out part for "held-out", and for
        "auto" when the images are the model's own data or an artifact was calibrated on the rest; else all.
        ``split`` may be a split record, drawn again exactly."""
        source = self.source
        if isinstance(split, dict):
            chosen = source.redraw(split)
        elif split == "held-out" or (split == "auto" and self.recorded):
            chosen = self.split
        elif split == "auto" and (record := _calibration_split(source, artifacts)) is not None:
            chosen = source.redraw(record)
        else:
            text = f"all {len(source):,} images of {source.spec}"
            return np.arange(len(source)), {"which": "all", "count": len(source), "text": text}
        count = len(chosen.held_out)
        return chosen.held_out, {
            "which": "held-out",
            "count": count,
            "split": chosen.record,
            "text": f"the {count:,} held-out images of {source.spec} (never calibrated on)",
        }


def _calibration_split(source: ImageSource, artifacts) -> dict[str, Any] | None:
    """The split of ``source`` an artifact's calibration set was drawn with (or its check used), when one was."""
    for path in map(Path, artifacts):
        manifest = read_manifest(path) or {}
        checked = (manifest.get("check") or {}).get("split")  # converted by quantize/build-engine from these images
        if isinstance(checked, dict) and checked.get("source_sha256") == source.sha256:
            return checked
        calibrated = manifest.get("calibration")
        where = calibrated.get("source") if isinstance(calibrated, dict) else None
        if not isinstance(where, str) or not where.endswith(".npz"):
            continue
        for candidate in (Path(where), path.parent / Path(where).name):
            record = (read_manifest(candidate) or {}).get("split")
            if isinstance(record, dict) and record.get("source_sha256") == source.sha256:
                return record
    return None
