"""The user's images, where they already are: an ImageFolder, a flat folder, an .npz, or the bundled digits.

Images are listed, never decoded up front, and streamed in preprocessed batches by parallel
workers, so a folder of 100,000 photos costs a file list, not 60 GB of float32:

    source = images.open_source("photos/", labels="labels.txt", num_classes=4)
    split = source.split(seed=0, val_fraction=0.2)        # calibration pool / held-out, recorded
    for x, y in source.batches(preprocess, split.held_out, batch_size=64, progress="validate"):
        ...

The rooms and their order are in docs/architecture.md (a contract in pyproject.toml keeps it).
"""

from __future__ import annotations

from pipeline.images.kinds import open_source
from pipeline.images.model_data import DATA_FIX, ModelData
from pipeline.images.model_input import FLAG_KEYS, ModelInput, PreprocessFlags
from pipeline.images.record import Record
from pipeline.images.source import DIGITS, SPLIT_SEED, VAL_FRACTION, ImageSource, read_labels
from pipeline.images.stream import DEFAULT_BATCH_SIZE, default_workers
