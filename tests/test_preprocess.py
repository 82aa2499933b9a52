"""Preprocess: torchvision's Resize + CenterCrop + ToTensor + Normalize, reproduced exactly, and its errors.

torchvision is not installed here, so the expected arrays are computed by hand from its documented
arithmetic: Resize(N) sets the shorter side to N and the longer to int(N * long / short);
CenterCrop takes top = int(round((H - h) / 2)), left = int(round((W - w) / 2)); ToTensor divides
uint8 by 255 in float32; Normalize subtracts the mean and divides by the std per channel.
"""

import json

import numpy as np
import onnx
import pytest
from PIL import Image

from pipeline.errors import EdgepipeError
from pipeline.images import PreprocessFlags, Record
from pipeline.onnxinfo import ModelInfo, TensorInfo
from pipeline.preprocess import METADATA_KEY, Preprocess

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def merged(file=None, base=None, channels=3, input_hw=None, **flags):
    """The one merge rule (``PreprocessFlags.resolve``): stored ``base``, then ``file``, then the flags,
    for a model with ``channels`` and a static ``input_hw`` (None: dynamic height/width)."""
    layout = flags.get("layout") if flags.get("layout") in ("nchw", "nhwc") else "nchw"
    height, width = input_hw or ("height", "width")
    shape = ("batch", channels, height, width) if layout == "nchw" else ("batch", height, width, channels)
    info = ModelInfo(
        TensorInfo("image", shape, "float32"), layout, (TensorInfo("logits", ("batch", 10), "float32"),), 17, "test"
    )
    return PreprocessFlags.parse(file=file, **flags).resolve(info, base)


def _noise(width, height, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))


def _by_hand(image, size_wh, box, mean, std, resample=Image.Resampling.BILINEAR):
    resized = image.resize(size_wh, resample).crop(box)
    x = np.asarray(resized, dtype=np.uint8).astype(np.float32) / np.float32(255)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return x.transpose(2, 0, 1)


def test_landscape_resize_crop_normalize_matches_torchvision_math():
    image = _noise(500, 375)  # W x H
    pre = merged(resize="256", crop="224", mean=",".join(map(str, MEAN)), std=",".join(map(str, STD)))
    out = pre.apply(image)
    # Resize(256): shorter side 375 -> 256, longer int(256 * 500 / 375) = 341.
    # CenterCrop(224): top = round(32 / 2) = 16, left = round(117 / 2) = round(58.5) = 58 (round half to even).
    expected = _by_hand(image, (341, 256), (58, 16, 58 + 224, 16 + 224), MEAN, STD)
    assert out.dtype == np.float32 and out.shape == (3, 224, 224)
    np.testing.assert_array_equal(out, expected)


def test_portrait_odd_size_bicubic_matches_torchvision_math():
    image = _noise(99, 150, seed=1)
    pre = merged(resize=64, crop=63, interpolation="bicubic")
    # Resize(64): width 99 -> 64, height int(64 * 150 / 99) = 96. CenterCrop(63): top round(16.5) = 16, left round(0.5) = 0.
    expected = _by_hand(image, (64, 96), (0, 16, 63, 16 + 63), (0, 0, 0), (1, 1, 1), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(pre.apply(image), expected)


@pytest.mark.parametrize("name", ["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"])
def test_every_interpolation_is_pils_filter_of_that_name(name):
    image = _noise(40, 30, seed=2)
    out = merged(resize="20x25", interpolation=name).apply(image)
    expected = np.asarray(image.resize((25, 20), getattr(Image.Resampling, name.upper())), dtype=np.float32) / 255
    np.testing.assert_allclose(out, expected.transpose(2, 0, 1), rtol=0, atol=1e-7)


def test_nhwc_layout_and_bgr_order():
    image = _noise(64, 48, seed=3)
    nchw = merged(resize="48x64", mean="0.1,0.2,0.3", std="0.5,0.6,0.7")
    nhwc = merged(resize="48x64", mean="0.1,0.2,0.3", std="0.5,0.6,0.7", layout="nhwc")
    np.testing.assert_array_equal(nhwc.apply(image), nchw.apply(image).transpose(1, 2, 0))
    # BGR: the channels are reversed, and mean/std are given in the model's (BGR) order.
    bgr = merged(resize="48x64", mean="0.3,0.2,0.1", std="0.7,0.6,0.5", channel_order="bgr")
    rgb = np.asarray(image, dtype=np.float32) / np.float32(255)
    expected = (rgb[:, :, ::-1] - np.float32([0.3, 0.2, 0.1])) / np.float32([0.7, 0.6, 0.5])
    np.testing.assert_array_equal(bgr.apply(image), expected.transpose(2, 0, 1))


def test_grayscale_and_colour_meet_the_models_channels():
    gray = _noise(30, 20, mode="L", seed=4)
    three = Preprocess.default_for((20, 30), 3).apply(gray)
    assert three.shape == (3, 20, 30) and np.array_equal(three[0], three[2])
    colour = _noise(30, 20, seed=5)
    one = Preprocess.default_for((20, 30), 1).apply(colour)
    np.testing.assert_array_equal(one[0], np.asarray(colour.convert("L"), dtype=np.float32) / np.float32(255))


def test_arrays_uint8_like_images_float_kept_in_their_units():
    pixels = np.random.default_rng(6).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    pre = merged(resize="10x15", mean="0.5,0.5,0.5", std="0.25,0.25,0.25")
    np.testing.assert_array_equal(pre.apply_array(pixels), pre.apply(Image.fromarray(pixels)))
    floats = pixels.astype(np.float32) / 255  # already in [0, 1]: not divided again
    at_size = Preprocess.default_for((20, 30), 3).apply_array(floats)
    np.testing.assert_allclose(at_size, floats.transpose(2, 0, 1), atol=1e-7)
    assert pre.apply_array(floats).shape == (3, 10, 15)


def test_default_is_model_size_and_says_so():
    pre = merged(channels=3, input_hw=(224, 224))
    assert pre == Preprocess.default_for((224, 224), 3) and pre.resize == (224, 224) and pre.mean is None
    assert pre.describe() == "no preprocessing given: images are resized to 224x224 and scaled to [0, 1]"
    assert pre.apply(_noise(300, 200)).shape == (3, 224, 224)
    # Normalization alone keeps the model's size.
    assert merged(mean="0.5,0.5,0.5", input_hw=(32, 32)).resize == (32, 32)
    text = merged(resize=256, crop=224, mean="0.485,0.456,0.406", std="0.229,0.224,0.225", layout="nhwc").describe()
    assert "256 on the shorter side" in text and "centre-cropped to 224x224" in text and "NHWC" in text


def test_file_yaml_and_json_flags_override(tmp_path):
    yaml_file = tmp_path / "pre.yaml"
    yaml_file.write_text(
        "resize: 256\ncrop: 224\nmean: [0.485, 0.456, 0.406]\nstd: 0.229,0.224,0.225\ninterpolation: bicubic\nchannel-order: rgb\n"
    )
    from_yaml = merged(file=yaml_file)
    assert (from_yaml.resize, from_yaml.crop, from_yaml.mean, from_yaml.interpolation) == (
        256,
        (224, 224),
        MEAN,
        "bicubic",
    )
    json_file = tmp_path / "pre.json"
    json_file.write_text(
        json.dumps(
            {"resize": 256, "crop": [224, 224], "mean": list(MEAN), "std": list(STD), "interpolation": "bicubic"}
        )
    )
    assert merged(file=json_file) == from_yaml
    overridden = merged(file=yaml_file, crop="192", layout="nhwc")
    assert overridden.crop == (192, 192) and overridden.layout == "nhwc" and overridden.resize == 256
    # A stored preprocessing (base) is overridden by the file and the flags in turn.
    assert merged(base=from_yaml, interpolation="bilinear").interpolation == "bilinear"


def test_json_round_trip_and_onnx_metadata():
    pre = merged(resize=256, crop="224x200", mean="0.5", std="0.25", channels=1, layout="nhwc")
    assert Preprocess.from_json(pre.to_json()) == pre
    assert Preprocess.from_json(json.loads(pre.to_json())) == pre  # as a manifest holds it
    model = onnx.ModelProto()
    model.metadata_props.add(key="other", value="kept")
    assert Preprocess.from_onnx(model) is None
    Record(Preprocess.default_for((32, 32), 3)).store_in(model)
    Record(pre).store_in(model)  # replaces the earlier one
    assert [p.key for p in model.metadata_props] == ["other", METADATA_KEY]
    assert Preprocess.from_onnx(model) == pre


def test_check_fits_names_both_sizes():
    merged(resize=256, crop=224).check_fits((224, 224))
    with pytest.raises(EdgepipeError, match="makes 200x200 images but the model takes 224x224"):
        merged(resize=256, crop=200).check_fits((224, 224))


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    return path


@pytest.mark.parametrize(
    "options, message",
    [
        ({"resize": "224", "crop": "256"}, "crop 256x256 is larger than resize 224"),
        ({"resize": "100x200", "crop": "150"}, "crop 150x150 is larger than resize 100x200"),
        ({"mean": "0.5,0.5"}, "mean has 2 values; images have 1 (grayscale) or 3 (colour) channels"),
        ({"std": "0.2,0.2,0.2,0.2"}, "std has 4 values; images have 1 (grayscale) or 3 (colour) channels"),
        ({"mean": "0.5,0.5,0.5", "channels": 1}, "mean has 3 values but the model's input has 1 channel"),
        ({"mean": "123.675,116.28,103.53"}, "looks like 0-255 units"),
        ({"std": "0.2,0,0.2"}, "std 0.2,0,0.2 has a value <= 0"),
        ({"mean": "a,b,c"}, "mean 'a,b,c' is not a list of numbers"),
        ({"resize": "big"}, "resize 'big' is not a size"),
        ({"crop": "0"}, "crop '0' is not a size"),
        ({"interpolation": "bilinar"}, "unknown interpolation 'bilinar' (did you mean bilinear?)"),
        ({"interpolation": "cubic"}, "unknown interpolation 'cubic'"),
        ({"layout": "nwhc"}, "unknown layout 'nwhc' (did you mean nhwc?)"),
        ({"channel_order": "rbg"}, "unknown channel_order 'rbg' (did you mean rgb?)"),
        ({"channel_order": "bgr", "channels": 1}, "channel_order bgr was given for a model with 1"),
    ],
)
def test_bad_options_are_one_line(options, message):
    with pytest.raises(EdgepipeError) as caught:
        merged(**options)
    assert message in caught.value.message
    assert "\n" not in str(caught.value) and caught.value.fix


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("pre.yaml", "resize: 256\ncrop: [224\n", "is not valid YAML or JSON (line 3)"),
        ("pre.bin", b"\xff\xfe\x00binary\x00", "is not valid YAML or JSON"),
        ("pre.json", "[1, 2, 3]", "holds list, not key: value pairs"),
        ("pre.yaml", "", "holds nothing"),
        (
            "pre.yaml",
            "resize: 256\nmena: [0.5, 0.5, 0.5]\ncorp: 224\nsize: 3\n",
            "unknown keys mena, corp, size (did you mean mena -> mean, corp -> crop",
        ),
        ("pre.yaml", "channels: 1\nresize: 32\n", "says 1 channels, the model's input has 3"),
    ],
)
def test_bad_files_are_one_line(tmp_path, name, content, message):
    path = _write(tmp_path, name, content)
    with pytest.raises(EdgepipeError) as caught:
        merged(file=path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_missing_file_and_bad_stored_json(tmp_path):
    with pytest.raises(EdgepipeError, match="does not exist"):
        merged(file=tmp_path / "nope.yaml")
    with pytest.raises(EdgepipeError, match="stored preprocessing is not JSON"):
        Preprocess.from_json("{resize")
    with pytest.raises(EdgepipeError, match="unknown key flip"):
        Preprocess.from_json('{"resize": 8, "flip": true}')
