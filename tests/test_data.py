import numpy as np
import pytest
from PIL import Image

from pipeline import data
from pipeline.errors import EdgepipeError


def test_digits_loads_at_model_size():
    ds = data.load_dataset("digits", image_size=32)
    assert ds.images.shape == (1797, 1, 32, 32)
    assert ds.images.dtype == np.float32
    assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0
    assert ds.class_names == [str(i) for i in range(10)]
    assert ds.source == "digits" and len(ds.sha256) == 64


def test_split_is_stratified_deterministic_and_disjoint():
    labels = data.load_dataset("digits", image_size=8).labels
    train_a, val_a = data.split_indices(labels, seed=3)
    train_b, val_b = data.split_indices(labels, seed=3)
    assert np.array_equal(val_a, val_b) and np.array_equal(train_a, train_b)
    assert not set(train_a) & set(val_a)
    assert len(train_a) + len(val_a) == len(labels)
    assert len(val_a) == round(0.2 * len(labels))
    per_class = np.bincount(labels[val_a])
    assert per_class.min() >= 30  # every class is in the held-out split
    assert not np.array_equal(val_a, data.split_indices(labels, seed=4)[1])


def _write_folder(root, sizes=((10, 12), (9, 9)), mode="RGB"):
    for label, size in zip(["cat", "dog"], sizes):
        (root / label).mkdir(parents=True)
        for i in range(3):
            Image.new(mode, size, color=(i * 40, 10, 200) if mode == "RGB" else i * 40).save(root / label / f"{i}.png")


def test_image_folder(tmp_path):
    _write_folder(tmp_path)
    ds = data.load_dataset(str(tmp_path), image_size=16)
    assert ds.images.shape == (6, 3, 16, 16)
    assert ds.class_names == ["cat", "dog"]
    assert list(ds.labels) == [0, 0, 0, 1, 1, 1]
    assert data.load_dataset(str(tmp_path), image_size=16, channels=1).images.shape == (6, 1, 16, 16)


def test_npz_layouts(tmp_path):
    rng = np.random.default_rng(0)
    y = np.array([0, 1, 2] * 4)
    for name, x in {
        "nhw": rng.integers(0, 255, (12, 8, 8), dtype=np.uint8),
        "nhwc": rng.random((12, 8, 8, 3), dtype=np.float32),
        "nchw": rng.random((12, 3, 8, 8), dtype=np.float32),
    }.items():
        np.savez(tmp_path / f"{name}.npz", x=x, y=y)
        ds = data.load_dataset(str(tmp_path / f"{name}.npz"), image_size=16)
        assert ds.images.shape[0] == 12 and ds.images.shape[2:] == (16, 16)
        assert ds.images.max() <= 1.0


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "does not exist"),
        ("empty_dir", "no class sub-folders"),
        ("no_images", "has no images"),
        ("not_image", "is not a readable image"),
        ("npz_no_y", "has no array y"),
        ("npz_corrupt", "cannot read"),
        ("npz_nan", "NaN or Inf"),
    ],
)
def test_bad_datasets_give_one_clear_error(tmp_path, case, message):
    path = tmp_path / "data"
    if case == "empty_dir":
        path.mkdir()
    elif case == "no_images":
        (path / "a").mkdir(parents=True)
    elif case == "not_image":
        _write_folder(path)
        (path / "cat" / "notes.txt").write_text("not an image")
    elif case.startswith("npz"):
        path = tmp_path / "data.npz"
        if case == "npz_no_y":
            np.savez(path, x=np.zeros((4, 8, 8)))
        elif case == "npz_corrupt":
            path.write_bytes(b"PK\x03\x04 truncated")
        else:
            x = np.zeros((4, 8, 8), dtype=np.float32)
            x[0, 0, 0] = np.nan
            np.savez(path, x=x, y=np.array([0, 0, 1, 1]))
    with pytest.raises(EdgepipeError, match=message) as info:
        data.load_dataset(str(path), image_size=8)
    assert "Fix:" in str(info.value) and "\n" not in str(info.value)


def test_normalize_uses_recorded_stats():
    images = np.ones((2, 1, 4, 4), dtype=np.float32)
    assert np.allclose(data.normalize(images, [0.5], [0.25]), 2.0)


@pytest.mark.parametrize(
    "labels, class_names, message, fix",
    [
        (np.array([0, 1, -1, 2] * 3), None, "label -1 is negative", "renumber them 0..N-1"),
        (np.array([0.0, 1.0, 2.0] * 4), None, "labels y are float64, not integer", "y.astype('int64')"),
        (np.array([0.5, 1.0, 2.0] * 4), None, "labels y are float64, not integer", "renumber them 0..N-1"),
        (np.array(["cat", "dog", "cat"] * 4), None, "not integer class indices", "numpy.unique"),
        (
            np.array([0, 1, 2] * 4),
            np.array(["cat", "dog"]),
            "label 2 is out of range: class_names names 2 classes",
            "one class name per class",
        ),
        (np.array([0, 1_000_000, 2_000_000] * 4), None, "label 2000000 is out of range", "class_names"),
    ],
)
def test_npz_with_bad_labels_gives_one_clear_error(tmp_path, labels, class_names, message, fix):
    path = tmp_path / "data.npz"
    extra = {} if class_names is None else {"class_names": class_names}
    np.savez(path, x=np.zeros((12, 8, 8), dtype=np.float32), y=labels, **extra)
    with pytest.raises(EdgepipeError, match=message) as info:
        data.load_dataset(str(path), image_size=8)
    text = str(info.value)
    assert str(path) in text and fix in text.split("Fix:")[1] and "\n" not in text


def test_npz_bad_labels_on_the_command_line_are_one_line(tmp_path, runner):
    from conftest import invoke

    path = tmp_path / "negative.npz"
    np.savez(path, x=np.zeros((12, 8, 8), dtype=np.float32), y=np.array([0, 1, -1] * 4))
    result = invoke(runner, "train", "--data", path, "--epochs", "1", "-o", tmp_path / "model.pt")
    assert result.exit_code == 1
    assert (
        result.stderr.strip()
        == f"Error: {path}: label -1 is negative; labels are class indices from 0. Fix: renumber them 0..N-1, e.g. y = numpy.unique(y, return_inverse=True)[1]."
    )
