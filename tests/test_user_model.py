"""The user's own PyTorch module through train and export: its spec recorded, its code trusted only when named."""

from __future__ import annotations

from conftest import invoke
from test_modelspec import write_model


def test_user_module_trains_and_exports_and_user_code_needs_naming(tmp_path, runner):
    net = write_model(tmp_path / "usermodel")
    spec = f"{net}:make_net"
    ckpt = tmp_path / "net.pt"
    result = invoke(
        runner,
        "train",
        "--model",
        spec,
        "--model-arg",
        "width=8",
        "--data",
        "digits",
        "--epochs",
        "1",
        "--img-size",
        "32",
        "-o",
        ckpt,
        "--json",
    )
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


def write_image_folder(root, classes=3, per_class=28, size=96, seed=0):
    """An ImageFolder of RGB pictures (enough for a calibration set) whose class is the colour of a box on a noisy background."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = [(220, 40, 40), (40, 200, 60), (50, 70, 230), (230, 220, 40)]
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 90, (size + 8, size + 4, 3)).astype(np.uint8)
            y, x = rng.integers(0, size // 2, 2)
            pixels[y : y + size // 2, x : x + size // 2] = colours[c]
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_user_module_runs_every_stage_at_its_input_size(tmp_path, runner):
    """file.py:callable -> train -> export -> calibrate -> fp16/int8 -> validate -> bench, at 96x96."""
    import json

    net = write_model(tmp_path / "usermodel")
    data = write_image_folder(tmp_path / "photos")
    folder = tmp_path / "run"
    args = [
        "run",
        "--model",
        f"{net}:make_net",
        "--model-arg",
        "width=8",
        "--input-size",
        "3x96x96",
        "--data",
        data,
        "--epochs",
        "1",
        "--no-engines",
        "--batches",
        "1",
        "--bench-seconds",
        "0.05",
        "--max-drop",
        "none",
        "-o",
        folder,
        "--json",
    ]
    result = invoke(runner, *args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {name: s["status"] for name, s in report["stages"].items()} == dict.fromkeys(
        ["train", "export", "calibrate", "quantize-int8", "quantize-fp16", "validate", "bench"], "done"
    )
    assert report["source"]["model_spec"]["spec"] == f"{net}:make_net" and report["source"]["input_shape"] == [
        3,
        96,
        96,
    ]
    assert f"Model: --model {net}:make_net at 3x96x96" in (folder / "report.md").read_text()

    checkpoint = json.loads((folder / "checkpoint.pt.manifest.json").read_text())
    assert checkpoint["model"]["model_spec"]["args"] == {"width": 8} and checkpoint["params"]["input_shape"] == [
        3,
        96,
        96,
    ]
    exported = json.loads((folder / "model.onnx.manifest.json").read_text())
    assert exported["model"]["spec"] == f"{net}:make_net"
    assert exported["parity"]["max_abs_diff"] <= 1e-4 and exported["parity"]["top1_agreement"] == 100.0
    validated = json.loads((folder / "validate.json").read_text())
    assert {row["precision"]: row["status"] for row in validated["rows"]} == {"fp32": "ok", "fp16": "ok", "int8": "ok"}

    again = invoke(runner, *args)  # nothing changed: every stage is reused, the model is not trained again
    assert again.exit_code == 0, again.output
    assert {s["status"] for s in json.loads(again.stdout)["stages"].values()} == {"reused"}

    refused = invoke(
        runner,
        "run",
        "--checkpoint",
        folder / "checkpoint.pt",
        "--data",
        data,
        "-o",
        tmp_path / "refused",
        "--no-engines",
    )
    assert refused.exit_code == 1
    message = refused.output.strip().splitlines()[-1]
    assert message.startswith("Error:") and "user code" in message and "--trust-model-code" in message
    assert not (tmp_path / "refused").exists(), "refused before the run directory is made"


def test_validate_bench_and_export_refuse_user_code_unless_named_and_say_what_a_size_raised(tmp_path, runner):
    import json

    net = write_model(tmp_path / "usermodel")
    spec = f"{net}:make_net"
    ckpt = tmp_path / "net.pt"
    trained = invoke(
        runner,
        "train",
        "--model",
        spec,
        "--data",
        "digits",
        "--epochs",
        "1",
        "--input-size",
        "1x32x32",
        "-o",
        ckpt,
        "--json",
    )
    assert trained.exit_code == 0, trained.output
    onnx = tmp_path / "net.onnx"
    assert invoke(runner, "export", ckpt, "--model", spec, "--dynamic-batch", "-o", onnx).exit_code == 0
    marker = net.with_name("imported.marker")
    marker.unlink()

    for args in (
        ["validate", "--reference", ckpt, onnx],
        ["bench", onnx, "--checkpoint", ckpt, "--iterations", "2", "--json-out", tmp_path / "b.json"],
    ):
        refused = invoke(runner, *args)
        assert refused.exit_code == 1, refused.output
        message = refused.output.strip().splitlines()[-1]
        assert (
            message.startswith("Error:")
            and "names user code" in message
            and f"--model {net.resolve()}:make_net" in message
        )
        assert not marker.exists() and not (tmp_path / "b.json").exists()

    named = invoke(runner, "validate", "--reference", ckpt, onnx, "--model", spec, "--json")
    assert named.exit_code == 0, named.output
    assert json.loads(named.stdout)["model_record"]["model_spec"]["spec"] == spec
    trusted = invoke(runner, "bench", onnx, "--checkpoint", ckpt, "--trust-model-code", "--iterations", "2", "--json")
    assert trusted.exit_code == 0, trusted.output
    assert {row["status"] for row in json.loads(trusted.stdout)["rows"]} == {"ok"}
    other = invoke(runner, "validate", "--reference", ckpt, onnx, "--model", "se_resnet")
    assert other.exit_code == 1 and "the checkpoint is for model" in other.output

    # the model was built for 1 channel: its first convolution says what is wrong with 3
    colour = invoke(runner, "export", ckpt, "--model", spec, "--input-size", "3x32x32", "-o", tmp_path / "colour.onnx")
    assert (
        colour.exit_code == 1
        and "the model cannot take input 3x32x32: its forward pass raised RuntimeError" in colour.output
    )
    assert not (tmp_path / "colour.onnx").exists()
    wrong = invoke(
        runner,
        "train",
        "--model",
        spec,
        "--data",
        "digits",
        "--epochs",
        "1",
        "--input-size",
        "3x32x",
        "-o",
        tmp_path / "x.pt",
    )
    assert wrong.exit_code == 1 and "--input-size '3x32x' is not a size in the format [C x] H x W" in wrong.output
    bigger = invoke(
        runner,
        "export",
        ckpt,
        "--model",
        spec,
        "--input-size",
        "1x48x48",
        "--dynamic-size",
        "-o",
        tmp_path / "big.onnx",
        "--json",
    )
    assert bigger.exit_code == 0, bigger.output
    assert json.loads(bigger.stdout)["input_shape"] == [1, 48, 48] and json.loads(bigger.stdout)["max_abs_diff"] <= 1e-4


def test_run_refuses_user_code_that_does_not_import_before_making_the_run_directory(tmp_path, runner):
    broken = tmp_path / "broken.py"
    broken.write_text(
        "import torch\nimport not_a_module_anywhere\n\ndef make_net():\n    return torch.nn.Linear(2, 2)\n"
    )
    output = tmp_path / "runs" / "broken"
    result = invoke(runner, "run", "--model", f"{broken}:make_net", "--data", "digits", "-o", output)
    lines = [line for line in result.output.strip().splitlines() if line.startswith("Error:")]
    assert result.exit_code == 1 and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert "not_a_module_anywhere" in lines[0]  # the import error's last line
    missing = invoke(
        runner, "run", "--model", f"{broken.with_name('absent.py')}:make_net", "--data", "digits", "-o", output
    )
    assert missing.exit_code == 1 and "absent.py" in missing.output.strip().splitlines()[-1]
    assert not output.exists()
