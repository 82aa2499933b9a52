"""Foreign ONNX models through ModelOpt INT8 and TensorRT-RTX's parser and builder (on the CPU).

TensorRT-RTX builds engines ahead of time for a target GPU (compute capability 8.9 here), so the
parser and builder run for real without a GPU; running the engines needs one (tests/test_gpu.py).
"""

import numpy as np
import onnx
import pytest
from foreign_models import foreign_model, fp16_with_autocast, random_images

from pipeline.errors import EdgepipeError
from pipeline.fidelity import Fidelity
from pipeline.onnxinfo import check_input_shape, describe, run_onnxruntime
from pipeline.opset import prove_same, upgrade_opset
from pipeline.quantize import INT8_DEFAULT_EXCLUDED_OPS, check_tensorrt_qdq_rules

# --- edgepipe internals used here (re-point this section if they move) -----------------------------
from pipeline.tensorrt import backend as backendmod
from pipeline.tensorrt.options import BuildSettings

# ----------------------------------------------------------------------------------------------------

TARGET_GPU = "8.9"


def _build(path, shapes: dict) -> bytes:
    """Parse and build with TensorRT-RTX for ``TARGET_GPU``; ``shapes``: {input: (min, opt, max)}."""
    if "tensorrt-rtx" not in backendmod.installed_backends():
        pytest.skip("TensorRT-RTX is not installed")
    be = backendmod.get_backend("tensorrt-rtx")
    builder, network, _parser = be.parse_onnx(str(path))
    settings = BuildSettings(compute_capability=(TARGET_GPU,))
    return be.build(builder, network, be.builder_config(builder, network, settings, shapes))


def _profile(info, batch=(1, 8, 32), sizes=((160, 160), (224, 224), (320, 320))):
    return {info.input_name: tuple((n, *info.sample_shape(*hw)) for n, hw in zip(batch, sizes))}


def test_modelopt_int8_accepts_the_upgraded_opset_11_model(tmp_path):
    from modelopt.onnx.quantization import quantize

    source = foreign_model("se_classifier", opset=11)
    upgraded = upgrade_opset(source)
    prove_same(source, upgraded, random_images((3, 224, 224), 2))
    fp32 = tmp_path / "upgraded.onnx"
    onnx.save(upgraded, str(fp32))
    int8 = tmp_path / "upgraded.int8.onnx"
    # As edgepipe's --int8 calls it (calibration images stand in for a user's set here).
    quantize(
        str(fp32),
        quantize_mode="int8",
        calibration_data=random_images((3, 224, 224), 32, seed=1),
        calibration_method="entropy",
        calibration_eps=["cpu"],
        op_types_to_exclude=list(INT8_DEFAULT_EXCLUDED_OPS),
        output_path=str(int8),
        log_level="WARNING",
        high_precision_dtype="fp16",
    )
    model = onnx.load(str(int8))
    assert sum(node.op_type == "QuantizeLinear" for node in model.graph.node) > 10
    check_tensorrt_qdq_rules(model)

    fidelity = Fidelity(["logits"])
    images = random_images((3, 224, 224), 16, seed=2)
    fidelity.update([run_onnxruntime(fp32, images)["logits"]], [run_onnxruntime(int8, images)["logits"]])
    assert fidelity.result()["top1_agreement"] >= 90.0 and fidelity.result()["cosine_min"] > 0.99
    assert len(_build(int8, _profile(describe(model), sizes=((224, 224),) * 3))) > 0


@pytest.mark.parametrize(
    "kind, options",
    [
        ("se_classifier", {"opset": 11}),
        ("se_classifier", {"dynamic_hw": True}),
        ("se_classifier", {"nhwc": True}),
        ("two_output", {}),
        ("text_recognizer", {}),
    ],
)
def test_tensorrt_rtx_builds_foreign_models_in_fp16(tmp_path, kind, options):
    source = foreign_model(kind, **options)
    info = describe(source)
    fp32 = tmp_path / "fp32.onnx"
    onnx.save(upgrade_opset(source), str(fp32))
    fp16 = fp16_with_autocast(fp32, tmp_path / "fp16.onnx")
    shapes = _profile(info) if info.dynamic_hw else _profile(info, sizes=((info.height, info.width),) * 3)
    images = random_images(info.sample_shape(224, 224) if info.dynamic_hw else info.sample_shape(), 4)
    assert all(np.isfinite(v).all() for v in run_onnxruntime(fp16, images).values())
    assert len(_build(fp16, shapes)) > 0


def test_tensorrt_rtx_requires_dims_sharing_a_name_to_be_equal():
    """What TensorRT says when H and W share one symbolic name, and edgepipe's earlier, clearer check."""
    source = foreign_model("shared_hw")
    info = describe(source)
    equal = {"image": ((1, 3, 160, 160), (8, 3, 224, 224), (16, 3, 320, 320))}
    assert len(_build(source, equal)) > 0
    unequal = {"image": ((1, 3, 160, 128), (8, 3, 224, 192), (16, 3, 320, 256))}
    with pytest.raises(EdgepipeError, match="Dimensions with name size must be equal"):
        _build(source, unequal)
    with pytest.raises(EdgepipeError, match="one symbol 'size', so TensorRT requires them equal"):
        check_input_shape(info, unequal["image"][0], "--minShapes")
