"""--model for any PyTorch model: zoo names, package modules and .py files the tests write, their
--model-arg values, the trust rule for user code a checkpoint names, weights files, input sizes."""

from __future__ import annotations

import hashlib
import shutil
import sys

import numpy as np
import pytest
import torch

from pipeline.errors import EdgepipeError
from pipeline.model_weights import load_weights
from pipeline.modelspec import ModelSpec, build, channels_of, input_size, load_recorded, parse_model_args, probe

# A small attention CNN as a user would keep it: its SE block in a sibling module, and a marker
# file written on import so a test can prove whether edgepipe imported (ran) it.
BLOCKS_PY = """
from torch import nn


class SqueezeExcite(nn.Module):
    def __init__(self, channels, reduction=4):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x):
        return x * self.fc2(self.fc1(x.mean((2, 3), keepdim=True)).relu()).sigmoid()
"""

NET_PY = """
from pathlib import Path

from torch import nn

from blocks import SqueezeExcite

Path(__file__).with_name("imported.marker").write_text("imported")


class AttentionNet(nn.Module):
    def __init__(self, num_classes=10, in_chans=3, width=16, img_size=96):
        super().__init__()
        self.img_size = img_size
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, 2, 1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            SqueezeExcite(2 * width),
        )
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def make_net(num_classes=10, in_chans=3, width=16):
    return AttentionNet(num_classes=num_classes, in_chans=in_chans, width=width)


def make_fixed(num_classes):
    return AttentionNet(num_classes=num_classes)


def make_pair(**kw):
    return AttentionNet(**kw), "extra"


class TwoHeads(AttentionNet):
    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3))), x


def not_a_model(**kw):
    return {"layers": 3}


LAYERS = 3
"""


def write_model(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "blocks.py").write_text(BLOCKS_PY)
    (folder / "net.py").write_text(NET_PY)
    return folder / "net.py"


@pytest.fixture()
def net_file(tmp_path):
    return write_model(tmp_path / "usermodel")


def error_of(fn, *args, **kwargs) -> str:
    """The one-line message of the EdgepipeError that ``fn`` raises."""
    with pytest.raises(EdgepipeError) as info:
        fn(*args, **kwargs)
    text = str(info.value)
    assert "\n" not in text and "Fix:" in text, text
    return text


# --- parsing -------------------------------------------------------------------------------------


def test_parse_names_each_kind(net_file, monkeypatch):
    zoo, timm = ModelSpec.parse("se_resnet"), ModelSpec.parse("timm:seresnet18")
    module = ModelSpec.parse("mypkg.nets:make_net", ["width=8"])
    monkeypatch.chdir(net_file.parent.parent)
    file = ModelSpec.parse("usermodel/net.py:make_net")
    assert [s.kind for s in (zoo, timm, module, file)] == ["zoo", "timm", "module", "file"]
    assert [s.is_user_code for s in (zoo, timm, module, file)] == [False, False, True, True]
    assert (timm.target, module.target, module.attr, module.args) == (
        "seresnet18",
        "mypkg.nets",
        "make_net",
        {"width": 8},
    )
    assert file.target == str(net_file.resolve()) and file.attr == "make_net"
    assert file.sha256 == hashlib.sha256(net_file.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", "--model is empty"),
        ("timm:", "names no timm model"),
        ("net.py", "names no callable"),
        ("mypkg.nets", "names no callable"),
        ("mypkg.nets:1net", "is not a Python name"),
        ("my-pkg:make", "is not a module name"),
        ("missing/net.py:make", "model file missing/net.py does not exist"),
    ],
)
def test_parse_refuses_bad_specs(text, expected):
    assert expected in error_of(ModelSpec.parse, text)


def test_model_args_are_yaml_scalars():
    args = parse_model_args(
        ["width=32", "drop=0.1", "lr=1e-3", "se=true", "act=relu", "name='64'", "scale=-2", "tag=", "none=null"]
    )
    assert args == {
        "width": 32,
        "drop": 0.1,
        "lr": 0.001,
        "se": True,
        "act": "relu",
        "name": "64",
        "scale": -2,
        "tag": "",
        "none": None,
    }
    assert type(args["width"]) is int and type(args["lr"]) is float


@pytest.mark.parametrize(
    "pairs, expected",
    [
        (["width"], "is not key=value"),
        (["2x=3"], "is not key=value"),
        (["width=1", "width=2"], "is given twice"),
        (["widths=[1, 2]"], "is a list, not a number, bool or string"),
    ],
)
def test_model_args_refuse_bad_pairs(pairs, expected):
    assert expected in error_of(parse_model_args, pairs)


def test_json_round_trip_records_file_path_and_sha(net_file):
    spec = ModelSpec.parse(f"{net_file}:make_net", ["width=8"])
    blob = spec.to_json()
    assert blob == {
        "spec": f"{net_file}:make_net",
        "kind": "file",
        "args": {"width": 8},
        "file": str(net_file.resolve()),
        "sha256": hashlib.sha256(net_file.read_bytes()).hexdigest(),
    }
    assert ModelSpec.from_json(blob) == spec
    for text in ("se_resnet", "timm:seresnet18", "mypkg.nets:make_net"):
        assert ModelSpec.from_json(ModelSpec.parse(text).to_json()) == ModelSpec.parse(text)
    assert ModelSpec.from_json("eca_resnet").kind == "zoo"  # checkpoints that record only a name


# --- building ------------------------------------------------------------------------------------


def test_build_from_file_with_sibling_import_and_data_defaults(net_file):
    spec = ModelSpec.parse(f"{net_file}:make_net", ["width=8"])
    model = build(spec, defaults={"num_classes": 5, "in_chans": 3, "img_size": 96})  # make_net takes no img_size
    assert model.fc.out_features == 5 and model.features[0].out_channels == 8
    assert tuple(model(torch.zeros(2, 3, 96, 96)).shape) == (2, 5)
    assert str(net_file.parent) not in sys.path  # the folder is on sys.path only while importing
    fixed = build(ModelSpec.parse(f"{net_file}:make_fixed"), defaults={"num_classes": 4, "in_chans": 3})
    assert fixed.fc.out_features == 4
    assert isinstance(build(ModelSpec.parse(f"{net_file}:AttentionNet"), {"num_classes": 2}), torch.nn.Module)


def test_build_from_package_module(tmp_path, monkeypatch):
    package = tmp_path / "site" / "userpkg_modelspec"
    write_model(package)
    (package / "__init__.py").write_text("")
    (package / "net.py").write_text(NET_PY.replace("from blocks import", "from .blocks import"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    model = build(ModelSpec.parse("userpkg_modelspec.net:make_net", ["num_classes=3"]), {"num_classes": 7})
    assert model.fc.out_features == 3  # --model-arg wins over the data's default


def test_build_from_zoo_and_unknown_zoo_name():
    model = build(ModelSpec.parse("se_resnet"), {"num_classes": 4, "in_chans": 1, "img_size": 32})
    assert tuple(model(torch.zeros(1, 1, 32, 32)).shape) == (1, 4)
    assert "did you mean 'se_resnet'" in error_of(build, ModelSpec.parse("se_resnett"))


def test_module_that_does_not_import_shows_the_error_line(tmp_path):
    bad = tmp_path / "broken.py"
    bad.write_text("import torch\nimport no_such_package_xyz\n")
    assert "broken.py does not import: ModuleNotFoundError: No module named 'no_such_package_xyz'" in error_of(
        build, ModelSpec.parse(f"{bad}:make")
    )
    (tmp_path / "syntax.py").write_text("def make(:\n")
    assert "SyntaxError" in error_of(build, ModelSpec.parse(f"{tmp_path / 'syntax.py'}:make"))
    assert "module no_such_package_xyz.nets does not import: ModuleNotFoundError" in error_of(
        build, ModelSpec.parse("no_such_package_xyz.nets:make")
    )
    assert not [
        name for name in sys.modules if name.startswith("edgepipe_user_broken")
    ]  # nothing half-imported is kept


def test_missing_callable_suggests_close_names(net_file):
    assert "net.py has no make_nett; did you mean make_net" in error_of(build, ModelSpec.parse(f"{net_file}:make_nett"))
    assert "is a int, not a function or class" in error_of(build, ModelSpec.parse(f"{net_file}:LAYERS"))


def test_callable_must_return_a_module(net_file):
    assert "returned a dict, not a torch.nn.Module" in error_of(build, ModelSpec.parse(f"{net_file}:not_a_model"))
    assert "returned a tuple, not a torch.nn.Module" in error_of(build, ModelSpec.parse(f"{net_file}:make_pair"))
    message = error_of(build, ModelSpec.parse(f"{net_file}:make_net", ["depth=3"]))
    assert "raised TypeError" in message and "depth" in message


# --- the trust rule ------------------------------------------------------------------------------


def test_recorded_user_code_is_not_imported_without_consent(net_file):
    recorded = ModelSpec.parse(f"{net_file}:make_net", ["width=8"]).to_json()
    marker = net_file.with_name("imported.marker")
    message = error_of(load_recorded, recorded, None, False)
    assert (
        "names user code" in message
        and "--trust-model-code" in message
        and f"--model {net_file.resolve()}:make_net" in message
    )
    assert not marker.exists()  # refused before anything was imported
    assert not [
        name
        for name in sys.modules
        if name.startswith("edgepipe_user_net_")
        and getattr(sys.modules[name], "__file__", "") == str(net_file.resolve())
    ]

    trusted = load_recorded(recorded, None, trust_model_code=True)
    assert trusted.args == {"width": 8} and not marker.exists()  # consent given, still nothing imported
    assert build(trusted, {"num_classes": 2}).features[0].out_channels == 8
    assert marker.exists()


def test_same_model_given_again_is_consent_and_its_args_win(net_file, tmp_path):
    recorded = ModelSpec.parse(f"{net_file}:make_net", ["width=8", "num_classes=3"]).to_json()
    given = ModelSpec.parse(f"{net_file}:make_net", ["num_classes=4"])
    assert load_recorded(recorded, given, False).args == {"width": 8, "num_classes": 4}
    moved = write_model(tmp_path / "moved")  # the same file at another path is the same model
    assert load_recorded(recorded, ModelSpec.parse(f"{moved}:make_net"), False).target == str(moved.resolve())
    assert "checkpoint is for model" in error_of(load_recorded, recorded, ModelSpec.parse("se_resnet"), False)
    assert "checkpoint is for model" in error_of(
        load_recorded, recorded, ModelSpec.parse(f"{net_file}:make_fixed"), False
    )


def test_recorded_relative_file_is_named_by_its_absolute_path(net_file, monkeypatch):
    monkeypatch.chdir(net_file.parent)
    recorded = ModelSpec.parse("net.py:make_net").to_json()
    monkeypatch.chdir(net_file.parent.parent)  # a later stage, run from another folder
    assert f"pass --model {net_file.resolve()}:make_net" in error_of(load_recorded, recorded, None, False)
    assert load_recorded(recorded, ModelSpec.parse("usermodel/net.py:make_net"), False).kind == "file"


@pytest.mark.parametrize(
    "blob", [{"kind": "file"}, {"spec": "x.py:f", "kind": "file"}, {"spec": "a", "kind": "plugin"}, ["se_resnet"]]
)
def test_recorded_spec_edgepipe_did_not_write_is_refused(blob):
    assert "is not one edgepipe wrote" in error_of(load_recorded, blob, None, True)


def test_trusted_file_must_be_unchanged_and_present(net_file):
    recorded = ModelSpec.parse(f"{net_file}:make_net").to_json()
    net_file.write_text(NET_PY + "\n# edited\n")
    assert "has changed since the checkpoint recorded it" in error_of(load_recorded, recorded, None, True)
    shutil.rmtree(net_file.parent)
    assert "does not exist" in error_of(load_recorded, recorded, None, True)


def test_recorded_zoo_and_timm_specs_load_as_before():
    assert load_recorded(ModelSpec.parse("se_resnet", ["img_size=48"]).to_json(), None, False).args == {"img_size": 48}
    assert load_recorded("se_resnet", None, False).kind == "zoo"
    assert load_recorded({"spec": "timm:seresnet18", "kind": "timm", "args": {}}, None, False).target == "seresnet18"
    assert (
        load_recorded(ModelSpec.parse("mypkg.nets:make").to_json(), ModelSpec.parse("mypkg.nets:make"), False).kind
        == "module"
    )
    assert "names user code" in error_of(load_recorded, ModelSpec.parse("mypkg.nets:make").to_json(), None, False)


# --- weights -------------------------------------------------------------------------------------


@pytest.fixture()
def net_and_reference(net_file):
    spec = ModelSpec.parse(f"{net_file}:make_net")
    torch.manual_seed(1)
    trained = build(spec, {"num_classes": 5}).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        return spec, trained, x, trained(x)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "checkpoint", "safetensors"])
def test_weights_load_strictly_from_pt_and_safetensors(net_and_reference, tmp_path, wrap):
    spec, trained, x, expected = net_and_reference
    state = trained.state_dict()
    if wrap == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "w.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / "w.pth"
        blob = {
            "plain": state,
            "state_dict": {"state_dict": state},
            "model": {"model": state, "epoch": 3},
            "checkpoint": {"state_dict": state, "config": {"model": "x", "mean": [0.5]}},
        }[wrap]
        torch.save(blob, path)
    model = build(spec, {"num_classes": 5}).eval()
    assert load_weights(model, path) == hashlib.sha256(path.read_bytes()).hexdigest()
    with torch.no_grad():
        assert torch.equal(model(x), expected)


def test_weights_for_another_architecture_name_key_and_shapes(net_and_reference, tmp_path):
    spec, trained, _, _ = net_and_reference
    path = tmp_path / "seven.pt"
    torch.save(build(spec, {"num_classes": 7}).state_dict(), path)
    message = error_of(load_weights, build(spec, {"num_classes": 5}), path)
    assert "weights for another architecture: fc.weight is [7, 32] in the file but [5, 32] in the model" in message
    wider = tmp_path / "wider.pt"
    state = dict(trained.state_dict())
    state.pop("fc.bias")
    state["head.weight"] = torch.zeros(1)
    torch.save(state, wider)
    assert "it has no fc.bias (the model needs it)" in error_of(load_weights, trained, wider)
    state["fc.bias"] = trained.state_dict()["fc.bias"]
    torch.save(state, wider)
    assert "it has head.weight, which the model does not" in error_of(load_weights, trained, wider)


def test_pickled_model_in_pt_is_refused(net_and_reference, tmp_path):
    spec, trained, _, _ = net_and_reference
    path = tmp_path / "whole.pt"
    torch.save(trained, path)  # the whole module pickled: loading it would run code
    message = error_of(load_weights, build(spec, {"num_classes": 5}), path)
    assert "holds pickled Python objects" in message and "weights_only" in message and "model.state_dict()" in message
    (tmp_path / "junk.pt").write_bytes(b"not weights")
    assert "is not a readable weights file" in error_of(load_weights, trained, tmp_path / "junk.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"not weights")
    assert "is not a readable .safetensors file" in error_of(load_weights, trained, tmp_path / "junk.safetensors")
    assert "does not exist" in error_of(load_weights, trained, tmp_path / "none.pt")


# --- input size and the probe --------------------------------------------------------------------


def test_input_size_given_or_the_models_own(net_and_reference):
    from pipeline.inputsize import InputSize

    spec, trained, _, _ = net_and_reference
    assert InputSize.parse("3x224x224").chw() == (3, 224, 224)
    for bad in ("3x", "3x224xabc", "0x96x96", "1x2x3x4"):
        assert "is not a size in the format [C x] H x W" in error_of(InputSize.parse, bad)
    assert input_size(trained) == (3, 96, 96)  # the module's own img_size, channels from its first conv
    assert channels_of(trained) == 3  # what --input-size HxW keeps
    assert input_size(spec) is None  # user code is not imported to find out: the data decides
    assert input_size(ModelSpec.parse("se_resnet", ["img_size=48", "in_chans=3"])) == (3, 48, 48)
    assert input_size(ModelSpec.parse("se_resnet")) is None
    assert input_size(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))) is None


def test_probe_says_what_the_forward_pass_raised(net_and_reference, net_file):
    spec, trained, _, _ = net_and_reference
    assert probe(trained, (3, 96, 96)) == (1, 5)
    assert trained.training is False
    message = error_of(probe, trained, (1, 96, 96))
    assert message.startswith("the model cannot take input 1x96x96: its forward pass raised RuntimeError")
    assert "--input-size" in message
    two_heads = build(ModelSpec.parse(f"{net_file}:TwoHeads"), {"num_classes": 5})
    assert "returns a tuple, not logits" in error_of(probe, two_heads, (3, 96, 96))


def test_timm_missing_is_one_line_with_the_install_fix():
    try:
        import timm  # noqa: F401
    except Exception:
        pass
    else:
        pytest.skip("timm is installed here; tests/test_timm.py covers it")
    assert "pip install 'edgepipe[timm]'" in error_of(build, ModelSpec.parse("timm:seresnet18"))


def test_user_model_exports_to_onnx_with_parity(net_and_reference, tmp_path):
    """The model the spec builds, with its weights, is the reference: ONNX matches it at 96x96."""
    import onnxruntime as ort

    spec, trained, _, _ = net_and_reference
    path = tmp_path / "weights.safetensors"
    from safetensors.torch import save_file

    save_file(trained.state_dict(), str(path))
    model = build(spec, {"num_classes": 5}).eval()
    load_weights(model, path)
    shape = input_size(model)
    probe(model, shape)
    onnx_path = tmp_path / "net.onnx"
    torch.onnx.export(
        model,
        (torch.zeros(1, *shape),),
        str(onnx_path),
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    images = np.random.default_rng(0).standard_normal((4, *shape)).astype(np.float32)
    with torch.no_grad():
        reference = trained(torch.from_numpy(images)).numpy()
    logits = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"input": images})[0]
    assert np.abs(logits - reference).max() <= 1e-4
    assert (logits.argmax(1) == reference.argmax(1)).all()
