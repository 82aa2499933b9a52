"""The user's images, where they already are: an ImageFolder, a flat folder, an .npz, or the bundled digits.
The rooms and their order are in docs/architecture.md (a contract in pyproject.toml keeps it)."""

from __future__ import annotations

from pipeline.images.kinds import open_source
from pipeline.images.model_data import DATA_FIX, ModelData
from pipeline.images.model_input import FLAG_KEYS, ModelInput, PreprocessFlags, Record
from pipeline.images.source import DIGITS, SPLIT_SEED, VAL_FRACTION, ImageSource, read_labels
from pipeline.images.stream import DEFAULT_BATCH_SIZE, default_workers
