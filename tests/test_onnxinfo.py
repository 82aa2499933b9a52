"""Describing ONNX models edgepipe did not export, and upgrading old opsets with proof (ONNX Runtime CPU)."""

import numpy as np
import onnx
import pytest
from foreign_models import NUM_CLASSES, TEXT_CLASSES, TEXT_STEPS, foreign_model, random_images
from onnx import TensorProto, helper

from pipeline import onnxinfo
from pipeline.errors import EdgepipeError
from pipeline.onnxinfo import TensorInfo, check_input_shape, check_profile_shapes, describe, opset_of
from pipeline.opset import prove_same, upgrade_opset


def test_foreign_classifier_is_described_from_its_graph():
    info = describe(foreign_model("se_classifier"))
    assert info.input == TensorInfo("image", ("batch", 3, 224, 224), "float32")
    assert (info.layout, info.channels, info.height, info.width, info.batch) == ("nchw", 3, 224, 224, None)
    assert not info.dynamic_hw and info.sample_shape() == (3, 224, 224)
    assert info.outputs == (TensorInfo("logits", ("batch", NUM_CLASSES), "float32"),)
    assert info.opset == 17 and not info.needs_opset_upgrade
    assert info.producer.startswith("pytorch")
    assert info.tied_dims == {} and info.notes() == []


def test_a_fixed_batch_is_read():
    model = onnx.load(foreign_model("se_classifier", batch=8))
    assert describe(model).batch == 8 and describe(model.SerializeToString()).batch == 8


@pytest.mark.parametrize("kind, opset", [("se_classifier", 11), ("se_classifier", 12), ("text_recognizer", 11)])
def test_old_opsets_are_upgraded_to_17_and_proven_unchanged(kind, opset):
    path = foreign_model(kind, opset=opset)
    info = describe(path)
    assert info.opset == opset and info.needs_opset_upgrade
    assert any("upgraded to 17" in note for note in info.notes())
    upgraded = upgrade_opset(path)
    onnx.checker.check_model(upgraded, full_check=True)
    assert opset_of(upgraded) == 17
    assert describe(upgraded).input == info.input and describe(upgraded).outputs == info.outputs
    # Squeeze took its axes as an attribute before opset 13 and takes them as an input since.
    assert all(len(node.input) == 2 and not node.attribute for node in upgraded.graph.node if node.op_type == "Squeeze")
    differences = prove_same(path, upgraded, random_images(info.sample_shape(), 4, seed=opset))
    assert set(differences) == set(info.output_names) and max(differences.values()) <= 1e-5


def test_dynamic_hw_at_opset_11_is_proven_at_several_sizes():
    path = foreign_model("se_classifier", opset=11, dynamic_hw=True)
    upgraded = upgrade_opset(path)
    for size in ((160, 192), (224, 224), (256, 320)):
        assert prove_same(path, upgraded, random_images((3, *size), 2))["logits"] <= 1e-5


def test_upgrade_keeps_metadata_and_leaves_a_model_at_the_target_as_is():
    model = onnx.load(foreign_model("se_classifier"))
    assert upgrade_opset(model) is model
    old = onnx.load(foreign_model("se_classifier", opset=12))
    old.metadata_props.add(key="labels", value="cat,dog")
    upgraded = upgrade_opset(old)
    assert [(p.key, p.value) for p in upgraded.metadata_props] == [
        ("labels", "cat,dog")
    ] and upgraded.producer_name == "pytorch"


def test_prove_same_names_the_output_that_differs():
    original = onnx.load(foreign_model("two_output"))
    changed = onnx.ModelProto()
    changed.CopyFrom(original)
    producer = next(node for node in changed.graph.node if "embedding" in node.output)
    producer.output[list(producer.output).index("embedding")] = "embedding_raw"
    changed.graph.initializer.append(onnx.numpy_helper.from_array(np.array(1.001, dtype=np.float32), "nudge"))
    changed.graph.node.append(helper.make_node("Mul", ["embedding_raw", "nudge"], ["embedding"]))
    with pytest.raises(EdgepipeError) as info:
        prove_same(original, changed, random_images((3, 224, 224), 2))
    message = str(info.value)
    assert "output 'embedding'" in message and "abs difference" in message and "allowed 1e-05" in message
    assert "logits" not in message and "Fix: re-export the model at opset 13 or later" in message


def test_dynamic_height_and_width_are_described():
    path = foreign_model("se_classifier", dynamic_hw=True)
    info = describe(path)
    assert info.input.shape == ("batch", 3, "height", "width")
    assert info.dynamic_hw and info.height is None and info.width is None and info.channels == 3
    assert info.tied_dims == {}
    assert info.sample_shape(160, 192) == (3, 160, 192)
    with pytest.raises(
        EdgepipeError, match=r"dynamic height/width and no size was given.*--optShapes image:1x3x224x224"
    ):
        info.sample_shape()
    check_input_shape(info, (4, 3, 160, 192))
    batch = onnxinfo.synthetic_batch(info, batch=2, height=160, width=192)
    assert batch.shape == (2, 3, 160, 192) and batch.dtype == np.float32
    assert onnxinfo.run_onnxruntime(path, batch)["logits"].shape == (2, NUM_CLASSES)
    assert info.notes() == []


def test_nhwc_input_is_detected():
    info = describe(foreign_model("se_classifier", nhwc=True))
    assert info.input.shape == ("batch", 224, 224, 3)
    assert (info.layout, info.channel_axis, info.hw_axes, info.channels, info.height, info.width) == (
        "nhwc",
        3,
        (1, 2),
        3,
        224,
        224,
    )
    assert info.sample_shape() == (224, 224, 3)
    assert onnxinfo.run_onnxruntime(foreign_model("se_classifier", nhwc=True), onnxinfo.synthetic_batch(info))[
        "logits"
    ].shape == (2, NUM_CLASSES)


def test_layout_that_cannot_be_told_asks_for_layout(tmp_path):
    model = _identity_model([1, 4, 32, 32])
    with pytest.raises(
        EdgepipeError,
        match=r"cannot tell whether input 'x' .* is NCHW or NHWC.*Fix: pass --layout nchw or --layout nhwc",
    ):
        describe(model)
    assert describe(model, layout="nchw").channels == 4
    with pytest.raises(EdgepipeError, match="unknown layout 'chw'"):
        describe(model, layout="chw")


def test_several_outputs_are_listed():
    info = describe(foreign_model("two_output"))
    assert info.output_names == ["logits", "embedding"]
    assert [o.shape for o in info.outputs] == [("batch", NUM_CLASSES), ("batch", 32)] and [
        o.rank for o in info.outputs
    ] == [2, 2]


def test_sequence_model_is_described():
    info = describe(foreign_model("text_recognizer"))
    assert info.input.shape == ("batch", 1, 32, 128) and (info.layout, info.channels, info.height, info.width) == (
        "nchw",
        1,
        32,
        128,
    )
    assert info.outputs == (TensorInfo("char_logits", ("batch", TEXT_STEPS, TEXT_CLASSES), "float32"),)
    assert info.outputs[0].rank == 3


def test_model_with_two_inputs_is_refused_naming_them():
    with pytest.raises(EdgepipeError) as info:
        describe(foreign_model("two_input"))
    message = str(info.value)
    assert (
        "the model has 2 inputs: 'image' (float32 [batch, 3, 224, 224]) and 'class_prior' (float32 [batch, 10])"
        in message
    )
    assert "single image input" in message and "Fix: export the model with the image as its only input" in message


def test_shared_symbolic_height_and_width_are_named():
    info = describe(foreign_model("shared_hw"))
    assert info.input.shape == ("batch", 3, "size", "size") and info.tied_dims == {"size": (2, 3)}
    assert info.notes() == [
        "input 'image' names its height and width 'size': TensorRT requires them equal in every shape"
    ]
    check_input_shape(info, (8, 3, 256, 256), "--maxShapes")
    with pytest.raises(EdgepipeError) as error:
        check_input_shape(info, (8, 3, 224, 192), "--optShapes")
    message = str(error.value)
    assert "--optShapes gives input 'image' height (axis 2) 224 and width (axis 3) 192" in message
    assert "one symbol 'size', so TensorRT requires them equal" in message
    assert "pass equal height and width in --minShapes/--optShapes/--maxShapes (e.g. image:1x3x224x224)" in message
    assert (
        "re-export the model with a distinct name per dimension (torch.onnx.export dynamic_axes={'image': {2: 'height', 3: 'width'}})"
        in message
    )


def test_profile_shapes_must_name_the_input_and_fit_it():
    info = describe(foreign_model("se_classifier"))
    check_profile_shapes(
        info, {"--minShapes": {"image": (1, 3, 224, 224)}, "--maxShapes": {"image": (32, 3, 224, 224)}}
    )
    with pytest.raises(
        EdgepipeError, match=r"--minShapes names input 'input', which the model does not have \(its input is 'image'\)"
    ):
        check_profile_shapes(info, {"--minShapes": {"input": (1, 3, 224, 224)}})
    with pytest.raises(
        EdgepipeError, match=r"--maxShapes gives input 'image' height \(axis 2\) 160; the model fixes it at 224"
    ):
        check_profile_shapes(info, {"--maxShapes": {"image": (8, 3, 160, 224)}})
    with pytest.raises(EdgepipeError, match="gives input 'image' 3 dimensions"):
        check_input_shape(info, (3, 224, 224))


def test_non_image_input_and_unreadable_files_are_refused(tmp_path):
    with pytest.raises(EdgepipeError, match=r"input 'x' has shape float32 \[1, 16\]; edgepipe takes a 4-D image input"):
        describe(_identity_model([1, 16]))
    with pytest.raises(EdgepipeError, match="does not exist"):
        describe(tmp_path / "missing.onnx")
    (tmp_path / "broken.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(EdgepipeError, match="is not a readable ONNX model"):
        describe(tmp_path / "broken.onnx")


def _identity_model(shape) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
