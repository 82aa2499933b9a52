"""An .npz as an image source: pixels ``x`` (read through the model's preprocessing) or model ``inputs`` (fed
as they are), and optionally integer labels ``y`` and ``class_names``. ``numpy.savez`` stores arrays
uncompressed, so they are memory-mapped from inside the archive; an .npz from ``savez_compressed`` cannot
be read row by row and is loaded whole."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import numpy as np

from pipeline.digest import sha256_file
from pipeline.errors import EdgepipeError
from pipeline.images.source import ImageSource

# Without class names an .npz's classes are 0..max(y). More than this, and more than its images: the
# labels are ids, not class indices (a classifier head that wide is not what was meant).
MAX_IMPLIED_CLASSES = 100_000
_Y_FIX = "save y as integers 0..C-1 in the model's output order"
_NPZ_FIX = "save pixels as x (N,H,W | N,H,W,C | N,C,H,W; uint8 0..255 or float 0..1), or preprocessed model inputs as inputs, and, if labelled, integer class indices as y, with numpy.savez"


class NpzSource(ImageSource):
    kind = ".npz"

    def __init__(self, path: Path, names: list[str] | None):
        try:
            with zipfile.ZipFile(path) as archive:
                members = [m[:-4] for m in archive.namelist() if m.endswith(".npy")]
            self.key = _npz_key(path, members)
            x = _npz_member(path, self.key)
            with np.load(path, allow_pickle=False) as archive:
                y = archive["y"] if "y" in members else None
                stored_names = [str(n) for n in archive["class_names"]] if "class_names" in members else None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, struct.error) as exc:
            raise EdgepipeError(f"cannot read {path}: {type(exc).__name__}: {str(exc)[:120]}", fix=_NPZ_FIX)
        self.preprocessed = self.key == "inputs"
        if self.preprocessed:
            if not np.issubdtype(x.dtype, np.number) or x.ndim < 2:
                raise EdgepipeError(f"{path}: inputs has shape {x.shape} and dtype {x.dtype}", fix=_NPZ_FIX)
        else:
            _check_pixels(path, x)
        self.path, self._x = path, (x if not isinstance(x, np.memmap) else None)
        self.channels_first = x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3)
        self.channels = 1 if x.ndim == 3 else int(x.shape[1] if self.channels_first else x.shape[-1])
        labels = _check_y(path, y, len(x), len(names or stored_names or []) or None) if y is not None else None
        class_names = names or stored_names
        if labels is not None and class_names is None:
            class_names = [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0)]
        super().__init__(str(path), len(x), labels, class_names)

    def __getstate__(self):  # workers map the file themselves instead of receiving a copy
        return {**self.__dict__, "_x": None if isinstance(self._x, np.memmap) else self._x}

    def _array(self) -> np.ndarray:
        if self._x is None:
            self._x = _npz_member(self.path, self.key)
        return self._x

    def name_of(self, index: int) -> str:
        return f"{self.path} {self.key}[{index}]"

    def read(self, index: int):
        row = np.array(self._array()[index])  # copy this one image out of the mapped file
        if self.preprocessed:
            return row.astype(np.float32)
        row = row.transpose(1, 2, 0) if self.channels_first else row
        if row.dtype == np.uint8:  # pixels: preprocessed exactly as a decoded image file
            from PIL import Image

            return Image.fromarray(np.ascontiguousarray(row[..., 0] if row.ndim == 3 and row.shape[-1] == 1 else row))
        return row

    def _identity(self) -> bytes:
        return bytes.fromhex(sha256_file(self.path))


def _npz_key(path: Path, members: list[str]) -> str:  # exactly one of "x" and "inputs"
    present = [key for key in ("x", "inputs") if key in members]
    if len(present) != 1:
        what = "both x and inputs" if present else f"neither x nor inputs (it has: {', '.join(members) or 'nothing'})"
        raise EdgepipeError(f"{path} holds {what}", fix=_NPZ_FIX)
    return present[0]


def _check_pixels(path: Path, x: np.ndarray) -> None:
    if x.ndim not in (3, 4) or (
        x.ndim == 4 and 1 not in (x.shape[1], x.shape[-1]) and 3 not in (x.shape[1], x.shape[-1])
    ):
        raise EdgepipeError(
            f"{path}: x has shape {x.shape}", fix="use N,H,W or N,H,W,C or N,C,H,W with 1 or 3 channels"
        )
    if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
        raise EdgepipeError(f"{path}: x has dtype {x.dtype}", fix="save x as uint8 (0..255) or float (0..1)")
    if np.issubdtype(x.dtype, np.floating) and x.size and (float(np.nanmin(x)) < 0.0 or float(np.nanmax(x)) > 1.0):
        raise EdgepipeError(
            f"{path}: x holds floats outside [0, 1] ({float(np.nanmin(x)):.3g} to {float(np.nanmax(x)):.3g}), so they are not pixels",
            fix="save pixels as uint8 0..255 or float 0..1 in x; preprocessed model inputs belong in an array named inputs",
        )


def _check_y(path: Path, y: np.ndarray, count: int, num_names: int | None) -> np.ndarray:
    if y.ndim != 1 or len(y) != count:
        raise EdgepipeError(
            f"{path}: y has shape {y.shape} but x holds {count} images", fix="save one class index per image as y"
        )
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating) or y.dtype == np.bool_):
        raise EdgepipeError(f"{path}: y has dtype {y.dtype}, not class indices", fix=_Y_FIX)
    if np.issubdtype(y.dtype, np.floating):
        fractional = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
        if len(fractional):
            raise EdgepipeError(
                f"{path}: y[{fractional[0]}] is {y[fractional[0]]}, not an integer class index ({len(fractional)} such labels)",
                fix=_Y_FIX,
            )
    if len(y) and y.min() < 0:
        first = int(np.flatnonzero(y < 0)[0])
        raise EdgepipeError(f"{path}: y[{first}] is {y[first]}, a negative class index", fix=_Y_FIX)
    if num_names is not None and len(y) and y.max() >= num_names:
        first = int(np.flatnonzero(y >= num_names)[0])
        raise EdgepipeError(
            f"{path}: y[{first}] is {y[first]}, out of range for the {num_names} class names",
            fix="save y as indices into the class names (0..C-1), one name per class",
        )
    if num_names is None and len(y) and y.max() >= max(count, MAX_IMPLIED_CLASSES):
        raise EdgepipeError(
            f"{path}: y holds {int(y.max())}, which would make {int(y.max()) + 1} classes for {count} images",
            fix="renumber the labels 0..C-1 (numpy.unique(y, return_inverse=True)[1]) and save the names as class_names",
        )
    return y.astype(np.int64)


def _npz_member(path: Path, name: str) -> np.ndarray:
    """Array ``name`` of an .npz: memory-mapped when stored uncompressed (numpy.savez), else loaded."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{name}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        with np.load(path, allow_pickle=False) as archive:
            return archive[name]
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            raise ValueError(f"{name}.npy has a damaged zip header")
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_length + extra_length)
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(f)
        offset = f.tell()
    if dtype.hasobject:
        raise ValueError(f"{name} holds Python objects")
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=shape, order="F" if fortran_order else "C", offset=offset)
