"""The user's own PyTorch module through train and export: its spec recorded, its code trusted only when named."""

from __future__ import annotations

from conftest import invoke
from test_modelspec import write_model


def test_user_module_trains_and_exports_and_user_code_needs_naming(tmp_path, runner):
    net = write_model(tmp_path / "usermodel")
    spec = f"{net}:make_net"
    ckpt = tmp_path / "net.pt"
    result = invoke(runner, "train", "--model", spec, "--model-arg", "width=8", "--data", "digits", "--epochs", "1", "--img-size", "32", "-o", ckpt, "--json")
    assert result.exit_code == 0, result.output
    assert ckpt.is_file()

    marker = net.with_name("imported.marker")
    marker.unlink()
    refused = invoke(runner, "export", ckpt, "-o", tmp_path / "refused.onnx")
    assert refused.exit_code == 1
    message = refused.output.strip().splitlines()[-1]
    assert message.startswith("Error:") and "user code" in message and "--trust-model-code" in message
    assert not marker.exists(), "refusing must import nothing"
    assert not (tmp_path / "refused.onnx").exists()

    named = invoke(runner, "export", ckpt, "--model", spec, "-o", tmp_path / "named.onnx", "--json")
    assert named.exit_code == 0, named.output
    trusted = invoke(runner, "export", ckpt, "--trust-model-code", "-o", tmp_path / "trusted.onnx", "--json")
    assert trusted.exit_code == 0, trusted.output
    assert (tmp_path / "trusted.onnx").is_file()
