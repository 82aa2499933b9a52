"""The user's images, streamed: ImageFolder, flat folders, .npz, digits; labels files; splits; errors."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from pipeline import images
from pipeline.errors import EdgepipeError
from pipeline.preprocess import Preprocess

ROTATIONS = ["0", "180", "270", "90"]  # sorted folder names
MODEL_ORDER = ["0", "90", "180", "270"]  # the model's output order, as its labels file lists it
PRE = Preprocess.from_dict({"resize": 64, "crop": 56, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})


def _image(seed, size, mode):
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))


@pytest.fixture()
def rotations(tmp_path):
    """An ImageFolder of 4 classes x 5 images: PNG and JPEG, RGB and grayscale, 224x224 and odd sizes."""
    root = tmp_path / "rotations"
    sizes = [(224, 224), (97, 131), (300, 200), (224, 224), (65, 64)]
    for c, name in enumerate(ROTATIONS):
        (root / name).mkdir(parents=True)
        for i, size in enumerate(sizes):
            mode = "L" if (c + i) % 3 == 0 else "RGB"
            _image(10 * c + i, size, mode).save(root / name / f"img{i}.{'png' if i % 2 else 'jpg'}")
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(MODEL_ORDER) + "\n")
    return root, labels


def _all(stream):
    xs, ys = zip(*stream)
    return np.concatenate(xs), (None if ys[0] is None else np.concatenate(ys))


def test_labels_file_maps_folders_to_the_models_order(rotations):
    root, labels = rotations
    mapped = images.open_source(str(root), labels=labels, num_classes=4)
    assert mapped.class_names == MODEL_ORDER and mapped.labelled and len(mapped) == 20
    sorted_names = images.open_source(str(root))
    assert sorted_names.class_names == ROTATIONS
    for index in range(len(mapped)):
        folder = mapped.name_of(index).split("/")[-2]
        assert mapped.labels[index] == MODEL_ORDER.index(folder)
        assert sorted_names.labels[index] == ROTATIONS.index(folder)


def test_batches_are_the_single_image_preprocessing_in_order(rotations):
    root, labels = rotations
    source = images.open_source(str(root), labels=labels)
    x, y = _all(source.batches(PRE, batch_size=6, workers=2))
    assert x.shape == (20, 3, 56, 56) and x.dtype == np.float32
    np.testing.assert_array_equal(y, source.labels)
    for index in (0, 7, 19):
        with Image.open(source.name_of(index)) as image:
            np.testing.assert_array_equal(x[index], PRE.apply(image))
    x_in_process, _ = _all(source.batches(PRE, batch_size=7, workers=0))
    np.testing.assert_array_equal(x_in_process, x)
    nhwc = Preprocess.from_dict({"resize": 64, "crop": 56, "layout": "nhwc"})
    some = [3, 11, 12]
    x_nhwc, y_nhwc = _all(source.batches(nhwc, some, batch_size=2, workers=1))
    assert x_nhwc.shape == (3, 56, 56, 3) and list(y_nhwc) == list(source.labels[some])


def test_batches_through_a_pipe_when_shared_memory_is_small_and_collect(rotations, monkeypatch):
    from pipeline.images import stream as image_stream

    source = images.open_source(str(rotations[0]))
    shared, _ = _all(source.batches(PRE, batch_size=8, workers=2))
    monkeypatch.setattr(
        image_stream, "_shared_memory_fits", lambda in_flight_bytes: False
    )  # e.g. Docker's 64 MB /dev/shm
    piped, _ = _all(source.batches(PRE, batch_size=8, workers=2))
    np.testing.assert_array_equal(piped, shared)
    x, y = source.batches(PRE, [2, 5, 17], batch_size=2, workers=0).collect()
    np.testing.assert_array_equal(x, shared[[2, 5, 17]])
    assert list(y) == list(source.labels[[2, 5, 17]])


def test_progress_hook_counts_to_the_end(rotations, capsys):
    source = images.open_source(str(rotations[0]))
    seen = []
    stream = source.batches(PRE, batch_size=8, workers=0, progress=lambda done, total: seen.append((done, total)))
    assert len(stream) == 3 and stream.count == 20
    list(stream)
    assert seen == [(8, 20), (16, 20), (20, 20)]
    list(source.batches(PRE, batch_size=8, workers=0, progress="validate"))  # rich bar with ETA on stderr
    assert "validate" in capsys.readouterr().err


def test_flat_folder_is_unlabelled(tmp_path):
    for i in range(5):
        _image(i, (40 + i, 30), "RGB" if i % 2 else "L").save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    source = images.open_source(str(tmp_path))
    assert len(source) == 5 and not source.labelled and source.kind == "folder of images"
    x, y = _all(source.batches(Preprocess.default_for((16, 16), 3), workers=0))
    assert x.shape == (5, 3, 16, 16) and y is None  # --max-drop refuses it (test_user_data): no labels


def test_npz_memory_mapped_with_and_without_labels(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, 20, 24, 3), dtype=np.uint8)  # N,H,W,C
    np.savez(tmp_path / "labelled.npz", x=x, y=np.arange(12) % 3)
    source = images.open_source(str(tmp_path / "labelled.npz"), num_classes=3)
    assert isinstance(source._array(), np.memmap) and source.class_names == ["0", "1", "2"]
    pre = Preprocess.from_dict({"resize": "10x12"})
    got, y = _all(source.batches(pre, batch_size=5, workers=2))
    np.testing.assert_array_equal(got[4], pre.apply(Image.fromarray(x[4])))
    assert list(y) == list(np.arange(12) % 3)
    floats = rng.random((6, 1, 16, 16), dtype=np.float32)  # N,C,H,W in [0, 1], no y
    np.savez_compressed(tmp_path / "unlabelled.npz", x=floats)
    unlabelled = images.open_source(str(tmp_path / "unlabelled.npz"))
    assert not unlabelled.labelled
    got, y = _all(unlabelled.batches(Preprocess.default_for((16, 16), 1), workers=0))
    np.testing.assert_allclose(got, floats, atol=1e-7) and y is None


def test_digits_stream_through_torch_s_antialiased_resize():
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    source = images.open_source("digits", num_classes=10)
    assert len(source) == 1797 and source.class_names == [str(i) for i in range(10)] and source.channels == 1
    pre = Preprocess.default_for((32, 32), 1)
    x, y = _all(source.batches(pre, np.arange(40), batch_size=16, workers=0))
    digits = load_digits()
    native = torch.from_numpy((digits.images[:40] / 16.0).astype(np.float32)[:, None])
    resized = F.interpolate(native, size=(32, 32), mode="bilinear", align_corners=False, antialias=True).numpy()
    np.testing.assert_array_equal(x, resized)
    np.testing.assert_array_equal(y, digits.target[:40])
    split = source.split(seed=0)  # scikit-learn's stratified split, as a checkpoint records it
    expected = train_test_split(np.arange(1797), test_size=359, random_state=0, stratify=digits.target)[1]
    np.testing.assert_array_equal(split.held_out, np.sort(expected))


def test_split_seeded_disjoint_stratified_recorded(rotations):
    source = images.open_source(str(rotations[0]), labels=rotations[1])
    split = source.split(seed=1, val_fraction=0.25)
    assert not set(split.pool) & set(split.held_out)
    assert sorted([*split.pool, *split.held_out]) == list(range(20))
    assert set(source.labels[split.held_out]) == {0, 1, 2, 3}  # every class is held out
    record = json.loads(json.dumps(split.record))  # small and storable
    assert record["counts"] == {"pool": 15, "held_out": 5} and record["stratified"] and len(json.dumps(record)) < 400
    again = images.open_source(str(rotations[0]), labels=rotations[1]).redraw(record)
    np.testing.assert_array_equal(again.held_out, split.held_out)
    assert not np.array_equal(source.split(seed=2, val_fraction=0.25).held_out, split.held_out)
    drawn = source.draw(split.pool, 8, seed=0)
    assert set(drawn) <= set(split.pool) and list(np.bincount(source.labels[drawn])) == [2, 2, 2, 2]


def test_identity_from_the_file_list_and_changes_with_the_data(rotations):
    root, labels = rotations
    first = images.open_source(str(root)).sha256
    assert images.open_source(str(root)).sha256 == first
    assert images.open_source(str(root), labels=labels).sha256 != first  # other labels, other data
    record = images.open_source(str(root)).split(seed=0).record
    _image(99, (50, 50), "RGB").save(root / "90" / "new.png")
    changed = images.open_source(str(root))
    assert changed.sha256 != first
    with pytest.raises(EdgepipeError, match="changed since its split was drawn"):
        changed.redraw(record)


def test_unlabelled_split_and_draw(tmp_path):
    for i in range(10):
        _image(i, (8, 8), "L").save(tmp_path / f"{i}.png")
    source = images.open_source(str(tmp_path))
    split = source.split(seed=0, val_fraction=0.3)
    assert len(split.held_out) == 3 and not split.record["stratified"]
    assert len(source.draw(split.pool, 4, seed=1)) == 4


def test_bad_image_in_the_middle_of_10000_is_named_when_reached(tmp_path):
    buffer = io.BytesIO()
    _image(0, (8, 8), "L").save(buffer, format="PNG")
    for i in range(10_000):
        (tmp_path / f"img_{i:05d}.png").write_bytes(buffer.getvalue())
    (tmp_path / "img_05123.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    source = images.open_source(str(tmp_path))  # listing does not decode
    assert len(source) == 10_000
    done = []
    with pytest.raises(EdgepipeError) as caught:
        for x, _ in source.batches(Preprocess.default_for((8, 8), 1), batch_size=256, workers=2):
            done.append(len(x))
    assert "img_05123.png is not a readable image" in caught.value.message and "\n" not in str(caught.value)
    assert sum(done) == 5120  # every batch before the bad file's was delivered


def test_different_sizes_without_resize_and_small_images_under_a_crop(tmp_path):
    _image(0, (20, 20), "RGB").save(tmp_path / "a.png")
    _image(1, (30, 20), "RGB").save(tmp_path / "b.png")
    source = images.open_source(str(tmp_path))
    with pytest.raises(EdgepipeError, match="b.png becomes a 3x20x30 input but .*a.png a 3x20x20 one"):
        list(source.batches(Preprocess.default_for(None, 3), workers=0))
    with pytest.raises(EdgepipeError, match="a.png cannot be preprocessed: it is 20x20, smaller than the 24x24 crop"):
        list(source.batches(Preprocess.from_dict({"crop": 24}), workers=0))


def _folder(tmp_path, names, loose=False):
    for name in names:
        (tmp_path / name).mkdir()
        _image(0, (8, 8), "L").save(tmp_path / name / "a.png")
    if loose:
        _image(0, (8, 8), "L").save(tmp_path / "stray.png")
    return tmp_path


@pytest.mark.parametrize(
    "case, message",
    [
        ("fewer", "has 3 names, fewer than the model's 4 classes"),
        ("missing", "class folders bird, dgo are not in labels file .* \\(did you mean dgo -> dog\\?\\)"),
        ("repeated", "names cat more than once"),
        ("empty", "labels file .* is empty"),
        (
            "no labels file",
            "has 3 class folders but the model has 4 classes, so sorted folder names cannot be its output order",
        ),
        ("loose", "holds both class sub-folders and 1 image\\(s\\) outside them \\(stray.png\\)"),
        ("no images", "holds no images"),
        ("not data", "not a folder or an .npz"),
        ("absent", "does not exist"),
    ],
)
def test_bad_folders_and_labels_files(tmp_path, case, message):
    labels = tmp_path / "labels.txt"
    labels.write_text(
        {"fewer": "cat\ndog\nfox\n", "repeated": "cat\ndog\ncat\nfox\n", "empty": "\n\n"}.get(
            case, "cat\ndog\nfox\nowl\n"
        )
    )
    root = tmp_path / "data"
    root.mkdir()
    spec, labels_arg = str(root), labels
    if case in ("fewer", "repeated", "empty"):
        _folder(root, ["cat", "dog"])
    elif case == "missing":
        _folder(root, ["cat", "dgo", "bird"])
    elif case == "no labels file":
        _folder(root, ["cat", "dog", "fox"])
        labels_arg = None
    elif case == "loose":
        _folder(root, ["cat", "dog"], loose=True)
    elif case == "not data":
        spec = str(labels)
    elif case == "absent":
        spec = str(tmp_path / "nowhere")
    with pytest.raises(EdgepipeError, match=message) as caught:
        images.open_source(spec, labels=labels_arg, num_classes=4)
    assert "\n" not in str(caught.value) and caught.value.fix


@pytest.mark.parametrize(
    "y, message",
    [
        (np.array([0, 1, -1, 2]), "y\\[2\\] is -1, a negative class index"),
        (np.array([0.0, 1.5, 2.0, 1.0]), "y\\[1\\] is 1.5, not an integer class index"),
        (np.array([0, 1, 7, 2]), "has label 7, out of range for the model's 3 classes"),
        (np.array(["a", "b", "c", "d"]), "y has dtype <U1, not class indices"),
        (np.array([0, 1, 2]), "y has shape \\(3,\\) but x holds 4 images"),
    ],
)
def test_bad_npz_labels(tmp_path, y, message):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 8, 8), np.uint8), y=y)
    with pytest.raises(EdgepipeError, match=message):
        images.open_source(str(tmp_path / "d.npz"), num_classes=3)


def test_npz_labels_checked_against_a_labels_file_and_integral_floats_accepted(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 8, 8), np.uint8), y=np.array([0.0, 1.0, 2.0]))
    with pytest.raises(EdgepipeError, match="y\\[2\\] is 2.0, out of range for the 2 class names"):
        images.open_source(str(tmp_path / "d.npz"), labels=labels)
    np.savez(tmp_path / "ok.npz", x=np.zeros((3, 8, 8), np.uint8), y=np.array([0.0, 1.0, 1.0]))
    source = images.open_source(str(tmp_path / "ok.npz"), labels=labels)
    assert source.labels.dtype == np.int64 and source.class_names == ["a", "b"]


def test_bad_npz_arrays(tmp_path):
    np.savez(tmp_path / "no_x.npz", images=np.zeros((2, 8, 8)))
    with pytest.raises(EdgepipeError, match="holds neither x nor inputs \\(it has: images\\)"):
        images.open_source(str(tmp_path / "no_x.npz"))
    np.savez(tmp_path / "both.npz", x=np.zeros((2, 8, 8)), inputs=np.zeros((2, 1, 8, 8)))
    with pytest.raises(EdgepipeError, match="holds both x and inputs"):
        images.open_source(str(tmp_path / "both.npz"))
    np.savez(tmp_path / "normalized.npz", x=np.full((2, 8, 8), -1.5, np.float32))
    with pytest.raises(
        EdgepipeError, match="floats outside \\[0, 1\\].*preprocessed model inputs belong in an array named inputs"
    ):
        images.open_source(str(tmp_path / "normalized.npz"))
    np.savez(tmp_path / "shape.npz", x=np.zeros((2, 5, 8, 8)))
    with pytest.raises(EdgepipeError, match="x has shape \\(2, 5, 8, 8\\)"):
        images.open_source(str(tmp_path / "shape.npz"))
    (tmp_path / "broken.npz").write_bytes(b"PK not really")
    with pytest.raises(EdgepipeError, match="cannot read"):
        images.open_source(str(tmp_path / "broken.npz"))


def test_an_npz_of_inputs_is_fed_as_it_is(tmp_path):
    inputs = np.random.default_rng(0).standard_normal((6, 1, 32, 100)).astype(np.float32)  # e.g. text lines
    np.savez(tmp_path / "lines.npz", inputs=inputs, y=np.array([0, 1, 2] * 2))
    source = images.open_source(str(tmp_path / "lines.npz"))
    assert source.preprocessed and source.labelled
    x, y = source.batches(Preprocess.default_for(None, 1), workers=0).collect()
    np.testing.assert_array_equal(x, inputs) and np.testing.assert_array_equal(y, [0, 1, 2] * 2)
