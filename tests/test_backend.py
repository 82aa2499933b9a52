"""The backend seam, against the real TensorRT-RTX (standard TensorRT is not installed here)."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from pipeline import cuda
from pipeline.errors import EdgepipeError
from pipeline.tensorrt import backend as backendmod
from pipeline.tensorrt import options
from pipeline.tensorrt.options import BuildSettings


def _has_gpu() -> bool:
    return cuda.current_compute_capability() is not None


def test_installed_backends_lists_tensorrt_rtx_and_auto_picks_it():
    assert backendmod.installed_backends() == ["tensorrt-rtx"]
    be = backendmod.get_backend("auto")
    assert be.name == "tensorrt-rtx" and be.version.startswith("1.")
    assert be.trt.__name__ == "tensorrt_rtx"
    # TensorRT-RTX has no builder precision flags or implicit calibrators.
    assert be.has_legacy_precision is False
    assert {"8.0", "8.6", "8.9", "12.0"} <= set(be.compute_capability_targets())


def test_missing_tensorrt_names_what_to_install():
    with pytest.raises(EdgepipeError) as info:
        backendmod.get_backend("tensorrt")
    message = str(info.value)
    assert "TensorRT is not installed" in message
    assert "python3-libnvinfer" in message and "pip install tensorrt" in message and "edgepipe[rtx]" in message


def test_unknown_backend_is_an_error():
    with pytest.raises(EdgepipeError, match="unknown backend"):
        backendmod.get_backend("onnxruntime")


@pytest.mark.parametrize(
    "text, expected", [("8.9", "8.9"), ("sm89", "8.9"), ("SM_120", "12.0"), ("120", "12.0"), ("current", "current")]
)
def test_compute_capability_spellings(text, expected):
    assert options.normalize_compute_capability(text) == expected


def test_bad_compute_capability_is_an_error():
    with pytest.raises(EdgepipeError, match="is not a compute capability"):
        options.normalize_compute_capability("ada")


@pytest.mark.parametrize(
    "settings, option",
    [
        (BuildSettings(dla_core=0), "--useDLACore"),
        (BuildSettings(version_compatible=True), "--versionCompatible"),
        (BuildSettings(legacy_precision=True), "--legacy-precision"),
    ],
)
def test_options_the_backend_lacks_name_the_backend(settings, option):
    be = backendmod.get_backend("tensorrt-rtx")
    with pytest.raises(EdgepipeError) as info:
        be.check_settings(settings)
    assert option in str(info.value) and "TensorRT-RTX" in str(info.value)


def _write(model, path):
    onnx.save(model, str(path))
    return path


def _unknown_op_model(path):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])
    node = helper.make_node("FancyGate", ["input"], ["out"], name="gate_0", domain="example.custom")
    graph = helper.make_graph([node], "g", [x], [y])
    return _write(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("example.custom", 1)]),
        path,
    )


def test_parser_error_names_node_op_and_reason(tmp_path):
    be = backendmod.get_backend()
    with pytest.raises(EdgepipeError) as info:
        be.parse_onnx(_unknown_op_model(tmp_path / "custom.onnx"))
    message = str(info.value)
    assert "node 'gate_0' (FancyGate)" in message and "cannot parse" in message and "Fix:" in message


def test_cancelled_build_raises_keyboard_interrupt_from_the_real_builder(tmp_path):
    import torch

    import models

    path = tmp_path / "m.onnx"
    torch.onnx.export(
        models.create("se_resnet", num_classes=10, in_chans=1, img_size=32).eval(),
        (torch.zeros(1, 1, 32, 32),),
        str(path),
        opset_version=17,
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
    )
    be = backendmod.get_backend()
    builder, network, _ = be.parse_onnx(path)
    config = be.builder_config(builder, network, BuildSettings(compute_capability=("8.9",)), {})
    steps = []

    def interrupt_on_third_step(phase, step):
        steps.append(phase)
        if len(steps) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        be.build(builder, network, config, on_step=interrupt_on_third_step)
    assert len(steps) == 3  # the builder stopped at once


@pytest.mark.skipif(_has_gpu(), reason="checks the error on a machine without a GPU")
def test_deserialize_without_gpu_is_a_clear_error():
    be = backendmod.get_backend()
    with pytest.raises(EdgepipeError, match="could not load the engine"):
        be.deserialize(b"not an engine")
