"""The data a model is trained on: the one image reader (pipeline.images) into a checkpoint's config and images."""

import numpy as np
import pytest
from PIL import Image

from pipeline.checkpoint import make_config, open_training_data
from pipeline.errors import EdgepipeError
from pipeline.images import open_source
from pipeline.images.source import split_indices


def test_digits_are_read_at_the_model_size_with_the_pool_statistics():
    config, images = make_config("se_resnet", open_source("digits"), 0)
    assert images.x_train.shape == (1438, 1, 32, 32) and images.x_val.shape == (359, 1, 32, 32)
    assert images.x_train.dtype == np.float32 and images.y_train.dtype == np.int64
    assert abs(float(images.x_train.mean())) < 1e-3  # normalized with the pool's own mean/std
    assert config["class_names"] == [str(i) for i in range(10)]
    assert config["preprocess"]["resize"] == [32, 32] and len(config["preprocess"]["mean"]) == 1
    assert config["data"]["source"] == "digits" and config["data"]["sha256"] == open_source("digits").sha256
    assert config["split"]["counts"] == {"pool": 1438, "held_out": 359}


def test_split_is_stratified_deterministic_and_disjoint():
    labels = open_source("digits").labels
    train_a, val_a = split_indices(labels, seed=3)
    train_b, val_b = split_indices(labels, seed=3)
    assert np.array_equal(val_a, val_b) and np.array_equal(train_a, train_b)
    assert not set(train_a) & set(val_a)
    assert len(train_a) + len(val_a) == len(labels)
    assert len(val_a) == round(0.2 * len(labels))
    assert np.bincount(labels[val_a]).min() >= 30  # every class is in the held-out split
    assert not np.array_equal(val_a, split_indices(labels, seed=4)[1])


def _write_folder(root, sizes=((10, 12), (9, 9)), mode="RGB", count=5):
    for label, size in zip(["cat", "dog"], sizes):
        (root / label).mkdir(parents=True)
        for i in range(count):
            Image.new(mode, size, color=(i * 40, 10, 200) if mode == "RGB" else i * 40).save(root / label / f"{i}.png")


def test_image_folder_in_its_own_channels_or_the_model_s(tmp_path):
    _write_folder(tmp_path)
    source = open_training_data(str(tmp_path))
    assert source.channels == 3 and source.class_names == ["cat", "dog"] and list(source.labels) == [0] * 5 + [1] * 5
    config, images = make_config("se_resnet", source, 0, (None, 16, 16))
    assert images.x_train.shape[1:] == (3, 16, 16) and config["input_shape"] == [3, 16, 16]
    assert make_config("se_resnet", source, 0, (1, 16, 16))[1].x_val.shape[1:] == (1, 16, 16)


def test_npz_layouts(tmp_path):
    rng = np.random.default_rng(0)
    y = np.array([0, 1, 2] * 4)
    for name, x in {
        "nhw": rng.integers(0, 255, (12, 8, 8), dtype=np.uint8),
        "nhwc": rng.random((12, 8, 8, 3), dtype=np.float32),
        "nchw": rng.random((12, 3, 8, 8), dtype=np.float32),
    }.items():
        np.savez(tmp_path / f"{name}.npz", x=x, y=y)
        images = make_config("se_resnet", open_training_data(str(tmp_path / f"{name}.npz")), 0, (None, 16, 16))[1]
        assert len(images.x_train) + len(images.x_val) == 12 and images.x_train.shape[2:] == (16, 16)


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "does not exist"),
        ("empty_dir", "holds no images"),
        ("no_images", "holds no images"),
        ("not_image", "is not a readable image"),
        ("npz_no_y", "training needs labelled images"),
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
        (path / "cat" / "broken.png").write_text("not an image")
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
        make_config("se_resnet", open_training_data(str(path)), 0, (None, 8, 8))
    assert "Fix:" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "labels, class_names, message, fix",
    [
        (np.array([0, 1, -1, 2] * 3), None, "is -1, a negative class index", "0..C-1"),
        (np.array([0.5, 1.0, 2.0] * 4), None, "not an integer class index", "as integers"),
        (np.array(["cat", "dog", "cat"] * 4), None, "not class indices", "as integers"),
        (np.array([0, 1, 2] * 4), np.array(["cat", "dog"]), "out of range for the 2 class names", "one name per class"),
        (np.array([0, 1_000_000, 2_000_000] * 4), None, "would make 2000001 classes", "class_names"),
    ],
)
def test_npz_with_bad_labels_gives_one_clear_error(tmp_path, labels, class_names, message, fix):
    path = tmp_path / "data.npz"
    extra = {} if class_names is None else {"class_names": class_names}
    np.savez(path, x=np.zeros((12, 8, 8), dtype=np.float32), y=labels, **extra)
    with pytest.raises(EdgepipeError, match=message) as info:
        open_training_data(str(path))
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
        == f"Error: {path}: y[2] is -1, a negative class index. Fix: save y as integers 0..C-1 in the model's output order."
    )
