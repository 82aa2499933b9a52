"""Tests for edgepipe's model registry, attention layers and zoo (real torch, ONNX, ONNX Runtime)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import models
from models import registry
from models.layers import ATTENTION_KINDS, AttentionPool, create_attention

BUILT_IN = ["attnpool_cnn", "bot_net", "cbam_resnet", "coord_resnet", "eca_resnet", "gated_cnn", "se_resnet"]
ALL_MODELS = models.names()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --- registry -------------------------------------------------------------------------------


def test_names_sorted_and_complete():
    assert ALL_MODELS == sorted(ALL_MODELS)
    assert set(BUILT_IN) <= set(ALL_MODELS)


def test_model_info_keys():
    kinds = {"se", "eca", "cbam", "coord", "gate", "softmax-pool", "mhsa"}
    seen = set()
    for name in BUILT_IN:
        info = models.model_info(name)
        assert info["name"] == name and info["description"]
        assert isinstance(info["default_epochs"], int) and info["default_lr"] > 0
        seen.add(info["attention"])
    assert seen == kinds


def test_model_info_is_a_copy():
    models.model_info("se_resnet")["attention"] = "changed"
    assert models.model_info("se_resnet")["attention"] == "se"


def test_unknown_model_suggests_close_match():
    with pytest.raises(models.UnknownModelError) as exc:
        models.create("se_resnt")
    msg = str(exc.value)
    assert "unknown model 'se_resnt'" in msg and "did you mean 'se_resnet'" in msg
    assert "'edgepipe models' lists them" in msg
    assert isinstance(exc.value, ValueError)
    with pytest.raises(models.UnknownModelError, match="did you mean"):
        models.model_info("botnet")


def test_unknown_model_without_close_match():
    with pytest.raises(models.UnknownModelError) as exc:
        models.create("zzzzzz")
    assert "did you mean" not in str(exc.value)


def test_timm_not_installed_error():
    try:
        import timm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("timm is installed")
    from pipeline.errors import EdgepipeError
    from pipeline.modelspec import ModelSpec, build

    with pytest.raises(EdgepipeError, match="timm models need timm, which does not import here"):
        build(ModelSpec.parse("timm:resnet18"))  # the one road to timm: pipeline.timm_models


def test_register_model_decorator():
    @models.register_model(attention="none", description="test model", default_epochs=3)
    def _edgepipe_test_net(num_classes=10, in_chans=1, img_size=32, **kw):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_chans * img_size * img_size, num_classes))

    @models.register_model("edgepipe-test-named", attention="none", description="named")
    def _factory(num_classes=10, in_chans=1, img_size=32, **kw):
        return _edgepipe_test_net(num_classes, in_chans, img_size)

    try:
        assert "_edgepipe_test_net" in models.names() and "edgepipe-test-named" in models.names()
        net = models.create("edgepipe-test-named", num_classes=4, in_chans=3, img_size=8)
        assert net(torch.zeros(2, 3, 8, 8)).shape == (2, 4)
        info = models.model_info("_edgepipe_test_net")
        assert info == {
            "name": "_edgepipe_test_net",
            "attention": "none",
            "description": "test model",
            "default_epochs": 3,
        }
        with pytest.raises(ValueError, match="already registered"):
            models.register_model("se_resnet", attention="x", description="clash")(_factory)
    finally:
        registry._REGISTRY.pop("_edgepipe_test_net", None)
        registry._REGISTRY.pop("edgepipe-test-named", None)


def test_count_params_and_macs():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1, bias=False))
    assert models.count_params(net) == 36
    assert models.count_macs(net, (1, 1, 8, 8)) == 36 * 64
    net.train()
    models.count_macs(net)
    assert net.training  # mode is restored


# --- attention layers -----------------------------------------------------------------------


def _layer(kind: str, channels: int = 32, size: int = 8):
    kw = {"feat_size": (size, size)} if kind == "mhsa" else {}
    return create_attention(kind, channels, **kw).eval()


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_attention_keeps_shape(kind):
    x = torch.randn(3, 32, 8, 8)
    with torch.no_grad():
        assert _layer(kind)(x).shape == x.shape


@pytest.mark.parametrize("kind", ["se", "eca", "cbam", "coord", "gate"])
def test_attention_gates_in_unit_interval(kind):
    x = torch.randn(3, 32, 8, 8)
    with torch.no_grad():
        maps = _layer(kind).attention_map(x)
    for g in maps if isinstance(maps, tuple) else (maps,):
        assert g.shape[0] == 3 and g.dim() == 4
        assert torch.all(g > 0) and torch.all(g < 1)


def test_mhsa_weights_are_a_softmax_over_positions():
    layer = _layer("mhsa", 32, 4)
    with torch.no_grad():
        w = layer.attention_weights(torch.randn(2, 32, 4, 4))
    assert w.shape == (2, 4, 16, 16)
    assert torch.all(w > 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 16))


def test_mhsa_needs_feat_size():
    with pytest.raises(ValueError, match="feat_size"):
        create_attention("mhsa", 32)


def test_attention_pool():
    pool = AttentionPool(32, num_heads=2).eval()
    x = torch.randn(3, 32, 4, 4)
    with torch.no_grad():
        w = pool.attention_map(x)
        out = pool(x)
    assert out.shape == (3, 32)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 2))
    # A constant feature map pools to itself whatever the weights.
    torch.testing.assert_close(pool(torch.ones(1, 32, 4, 4)), torch.ones(1, 32))


def test_unknown_attention_kind():
    with pytest.raises(ValueError, match="unknown attention kind"):
        create_attention("sse", 8)


# --- zoo ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_MODELS)
@pytest.mark.parametrize("img_size,in_chans", [(32, 1), (32, 3), (64, 1), (64, 3)])
def test_forward_shape(name, img_size, in_chans):
    net = models.create(name, num_classes=7, in_chans=in_chans, img_size=img_size).eval()
    with torch.no_grad():
        assert net(torch.randn(2, in_chans, img_size, img_size)).shape == (2, 7)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_edge_sized(name):
    net = models.create(name)
    assert 0 < models.count_params(net) <= 5_000_000
    assert models.count_macs(net, (1, 1, 32, 32)) > 0


def _randomize_init(net: torch.nn.Module) -> torch.nn.Module:
    """Give every BatchNorm non-trivial statistics and affine terms, and pooling heads random scores.

    The zoo zero-initializes the last BN of each residual branch and the attention-pool scores, so
    an untrained model would bypass its attention entirely and an export check would not test it.
    """
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, AttentionPool):
                m.score.weight.normal_(0, 0.5)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return net


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Export each model once per test run: name -> (eval-mode model, ONNX path)."""
    out_dir, cache = tmp_path_factory.mktemp("onnx"), {}

    def get(name: str):
        if name not in cache:
            torch.manual_seed(0)
            net = _randomize_init(models.create(name, num_classes=10, in_chans=1, img_size=32)).eval()
            path = out_dir / f"{name}.onnx"
            torch.onnx.export(
                net,
                torch.randn(1, 1, 32, 32),
                str(path),
                opset_version=17,
                dynamo=False,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
            cache[name] = (net, path)
        return cache[name]

    return get


@pytest.mark.parametrize("name", ALL_MODELS)
def test_onnx_export_and_ort_parity(name, exported):
    net, path = exported(name)
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph, full_check=True)
    ops = {n.op_type for n in graph.graph.node}
    attention = models.model_info(name)["attention"]
    if attention in {"se", "eca", "cbam", "coord", "gate"}:
        assert "Sigmoid" in ops  # the INT8 stage finds gates by op type
    if attention in {"softmax-pool", "mhsa"}:
        assert "Softmax" in ops
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        x = torch.randn(batch, 1, 32, 32)
        with torch.no_grad():
            ref = net(x).numpy()
        (got,) = sess.run(["logits"], {"input": x.numpy()})
        assert got.shape == (batch, 10)
        assert np.abs(got - ref).max() <= 1e-4


@pytest.mark.parametrize("name", ALL_MODELS)
def test_tensorrt_rtx_parses_and_builds(name, exported):
    """TensorRT-RTX parses the ONNX and builds an engine ahead of time on the CPU (no GPU needed)."""
    trt = pytest.importorskip("tensorrt_rtx")
    _, path = exported(name)
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(path)), [str(parser.get_error(i)) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (1, 1, 32, 32), (1, 1, 32, 32), (8, 1, 32, 32))
    config.add_optimization_profile(profile)
    config.num_compute_capabilities = 1
    config.set_compute_capability(trt.ComputeCapability.SM89, 0)
    assert builder.build_serialized_network(network, config) is not None
