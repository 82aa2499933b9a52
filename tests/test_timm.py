"""timm models through --model timm:NAME at their real input size (the optional timm environment).

Run with `make -f timm.mk test-timm` (or `make test-timm` where the Makefile includes timm.mk). Every
test here is marked ``timm`` and skips cleanly where timm does not import. No weights are
downloaded: the test writes its own weights file.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest
import torch

from pipeline.errors import EdgepipeError
from pipeline.model_weights import load_weights
from pipeline.modelspec import ModelSpec, build, input_size, probe
from pipeline.timm_models import timm_data_config

pytestmark = [pytest.mark.timm, pytest.mark.slow]  # its own environment; about a minute on 2 cores

try:
    import timm  # noqa: F401  (optional: imports torchvision)
except Exception as exc:  # not installed, or a torchvision that does not match torch
    pytest.skip(f"timm does not import here ({type(exc).__name__}); run `make test-timm`", allow_module_level=True)

from PIL import Image  # noqa: E402  (after the skip: only the timm environment runs these)

# (model, its own input size, resize = floor(size / crop_pct)): an SE-ResNet at 224x224 and an
# ECA-ResNet whose own size is 256x256.
MODELS = [("timm:seresnet18", [3, 224, 224], 256), ("timm:ecaresnet26t", [3, 256, 256], 292)]
NUM_CLASSES = 10


def report(model: str, stage: str, seconds: float) -> None:
    print(f"[timm timing] {model} {stage}: {seconds:.2f} s")


def trained_like(model: torch.nn.Module, batch: torch.Tensor, seed: int = 0) -> None:
    """Make random weights behave like trained ones, so parity and top-1 mean something.

    timm zero-initialises each block's last BN, which switches the residual branches (and their
    attention) off, and a random network's logits barely depend on its input. So: random BN
    scales and shifts, BN statistics measured on real images (as training leaves them), and a
    classifier over standardised features (different images get different classes).
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=generator))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=generator))
                m.reset_running_stats()
                m.momentum = None  # a plain average over the batch
        model.train()
        model(batch)
        model.eval()
        features = model.forward_head(model.forward_features(batch), pre_logits=True)
        mean, std = features.mean(0), features.std(0) + 1e-6
        head = model.get_classifier()
        weight = torch.randn(head.out_features, head.in_features, generator=generator) / std / head.in_features**0.5
        head.weight.copy_(weight)
        head.bias.copy_(-(weight @ mean))


def images(count: int, seed: int = 0) -> list[Image.Image]:
    """RGB pictures of different sizes and aspect ratios: smooth gradients with coloured boxes."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        h, w = int(rng.integers(240, 400)), int(rng.integers(240, 400))
        ys, xs = np.mgrid[0:h, 0:w]
        pixels = np.stack([xs / w * 255, ys / h * 255, (xs + ys) / (h + w) * 255], -1)
        for _ in range(4):
            y, x = int(rng.integers(0, h - 60)), int(rng.integers(0, w - 60))
            pixels[y : y + 60, x : x + 60] = rng.integers(0, 256, 3)
        out.append(Image.fromarray(pixels.astype(np.uint8)))
    return out


def preprocess(image: Image.Image, cfg: dict) -> np.ndarray:
    """The evaluation preprocessing the data config names: resize the shorter side, centre crop,
    scale to [0, 1], normalise, NCHW. Written with PIL and numpy, independent of timm."""
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}[cfg["interpolation"]]
    w, h = image.size
    short = cfg["resize"]
    size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)  # as torchvision's Resize
    image = image.resize(size, resample)
    ch, cw = cfg["crop"]
    left, top = int(round((image.width - cw) / 2)), int(round((image.height - ch) / 2))  # as CenterCrop
    pixels = np.asarray(image.crop((left, top, left + cw, top + ch)), dtype=np.float32) / 255.0
    pixels = (pixels - np.array(cfg["mean"], np.float32)) / np.array(cfg["std"], np.float32)
    return pixels.transpose(2, 0, 1)


@pytest.fixture(scope="module", params=MODELS, ids=lambda m: m[0])
def weights(request, tmp_path_factory):
    """(spec, weights file, source model, size, resize): a timm attention ResNet with trained-like
    weights written to a local .safetensors file."""
    from safetensors.torch import save_file

    name, size, resize = request.param
    spec = ModelSpec.parse(name)
    torch.manual_seed(0)
    started = time.perf_counter()
    source = build(spec, {"num_classes": NUM_CLASSES, "img_size": 32}).eval()  # img_size is not timm's
    report(name, "build", time.perf_counter() - started)
    cfg = timm_data_config(source)
    trained_like(source, torch.from_numpy(np.stack([preprocess(image, cfg) for image in images(16, seed=1)])))
    path = tmp_path_factory.mktemp("timm") / f"{spec.target}.safetensors"
    save_file(source.state_dict(), str(path))
    return spec, path, source, size, resize


def test_timm_data_config_is_the_models_own(weights):
    spec, _, source, size, resize = weights
    cfg = timm_data_config(source)
    assert cfg["input_size"] == size and cfg["crop"] == size[1:]
    assert cfg["interpolation"] == "bicubic" and cfg["crop_pct"] == 0.875
    assert cfg["resize"] == resize  # floor(size / crop_pct), shorter side, as timm's eval transform
    assert cfg["mean"] == pytest.approx([0.485, 0.456, 0.406]) and cfg["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert (cfg["channel_order"], cfg["layout"]) == ("rgb", "nchw")
    assert input_size(source) == tuple(size) == input_size(spec)
    # The keys mean what timm means: its own evaluation transform gives the same pixels.
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=source), is_training=False)
    for image in images(3, seed=2):
        assert np.abs(transform(image).numpy() - preprocess(image, cfg)).max() < 1e-5


def test_timm_build_load_export_onnx_runtime_parity(weights, tmp_path):
    import onnx
    import onnxruntime as ort

    spec, path, source, size, _ = weights
    started = time.perf_counter()
    model = build(spec, {"num_classes": NUM_CLASSES})
    sha = load_weights(model, path)
    report(spec.text, "build + load_weights", time.perf_counter() - started)
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    model.eval()
    cfg = timm_data_config(model)
    shape = input_size(model)
    assert probe(model, shape) == (1, NUM_CLASSES)

    onnx_path = tmp_path / f"{spec.target}.onnx"
    started = time.perf_counter()
    torch.onnx.export(
        model,
        (torch.zeros(1, *shape),),
        str(onnx_path),
        dynamo=False,
        opset_version=17,
        do_constant_folding=True,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    report(spec.text, f"torch.onnx.export at {'x'.join(map(str, shape))}", time.perf_counter() - started)

    graph_input = onnx.load(str(onnx_path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in graph_input] == ["batch", *size]  # dynamic batch, the model's size

    batch = np.stack([preprocess(image, cfg) for image in images(6)])
    assert batch.shape == (6, *size)
    started = time.perf_counter()
    with torch.no_grad():
        reference = source(torch.from_numpy(batch)).numpy()  # the model as it was before saving
    report(spec.text, "PyTorch forward, batch 6", time.perf_counter() - started)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    started = time.perf_counter()
    logits = session.run(None, {"input": batch})[0]
    report(spec.text, "ONNX Runtime forward, batch 6", time.perf_counter() - started)
    diff = float(np.abs(logits - reference).max())
    print(f"[timm parity] {spec.text} max abs logit diff {diff:.2e}, top-1 {reference.argmax(1).tolist()}")
    assert diff <= 1e-4
    assert (logits.argmax(1) == reference.argmax(1)).all()
    assert len(set(reference.argmax(1).tolist())) >= 3  # the images get different classes: top-1 means something


def test_timm_errors_are_one_line(tmp_path):
    with pytest.raises(EdgepipeError, match=r"timm has no model 'seresnet81'; did you mean timm:seresnet18"):
        build(ModelSpec.parse("timm:seresnet81"))
    plain = tmp_path / "resnet18.pt"
    torch.save(build(ModelSpec.parse("timm:resnet18"), {"num_classes": NUM_CLASSES}).state_dict(), plain)
    se_resnet = build(ModelSpec.parse("timm:seresnet18"), {"num_classes": NUM_CLASSES})
    with pytest.raises(EdgepipeError, match=r"weights for another architecture: it has no layer1\.0\.se\."):
        load_weights(se_resnet, plain)
    with pytest.raises(EdgepipeError, match=r"cannot take input 1x224x224: its forward pass raised RuntimeError"):
        probe(se_resnet, (1, 224, 224))
    with pytest.raises(EdgepipeError, match=r"timm could not build seresnet18 .*TypeError"):
        build(ModelSpec.parse("timm:seresnet18", ["depth_multiplier=2"]))


def test_timm_through_edgepipe_run_with_local_weights(weights, tmp_path, capsys):
    """timm:NAME at its own size through every stage of `edgepipe run`, weights from a local file.

    The images are labelled with the source model's own predictions, so the FP32 model is right on
    all of them and the INT8 budget (top-1 points lost) measures what quantization changed. As on a
    trained model's own held-out images, only clearly classified pictures are kept (top-2 margin in
    the upper half): a random head leaves some pictures on a class boundary, where any rounding flips them.
    """
    import json

    from click.testing import CliRunner

    from pipeline.cli import main

    spec, path, source, size, _ = weights
    if spec.target != "seresnet18":
        pytest.skip("one model is enough through every stage")
    cfg = timm_data_config(source)
    pictures = images(220, seed=3)
    with torch.no_grad():
        logits = source(torch.from_numpy(np.stack([preprocess(p, cfg) for p in pictures])))
    top2 = logits.topk(2, dim=1).values
    margin = (top2[:, 0] - top2[:, 1]).numpy()
    clear = margin >= np.median(margin)
    pictures = [p for p, keep in zip(pictures, clear) if keep]
    predicted = [int(c) for c, keep in zip(logits.argmax(1).tolist(), clear) if keep]
    counts = np.bincount(predicted, minlength=NUM_CLASSES)
    folder = tmp_path / "photos"
    for c in range(NUM_CLASSES):
        (folder / f"class{c}").mkdir(parents=True)
    for i, (picture, label) in enumerate(zip(pictures, predicted)):
        if counts[label] >= 2:  # every class present holds at least two images
            picture.save(folder / f"class{label}" / f"{i}.png")

    run_dir = tmp_path / "run"
    started = time.perf_counter()
    result = CliRunner().invoke(
        main,
        [
            "run",
            "--model",
            spec.text,
            "--weights",
            str(path),
            "--data",
            str(folder),
            "--batches",
            "1",
            "--bench-seconds",
            "0.2",
            "-o",
            str(run_dir),
            "--json",
        ],
        catch_exceptions=False,
    )
    report(
        spec.text,
        "edgepipe run (train stage takes the weights, export, calibrate, fp16, int8, engines, validate, bench)",
        time.perf_counter() - started,
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["source"]["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert summary["source"]["input_shape"] == size
    exported = json.loads((run_dir / "model.onnx.manifest.json").read_text())
    assert exported["parity"]["max_abs_diff"] <= 1e-4 and exported["parity"]["top1_agreement"] == 100.0
    import onnx

    stored = {p.key: p.value for p in onnx.load(str(run_dir / "model.onnx")).metadata_props}
    assert (
        json.loads(stored["edgepipe.preprocess"])["crop"] == size[1:]
        and json.loads(stored["edgepipe.preprocess"])["interpolation"] == "bicubic"
    )
    rows = {
        row["precision"]: row
        for row in json.loads((run_dir / "validate.json").read_text())["rows"]
        if row["artifact"].endswith(".onnx")
    }
    int8 = json.loads((run_dir / "model.int8.onnx.manifest.json").read_text())
    with capsys.disabled():
        print(
            f"\n[timm run] {spec.text}: export max abs diff {exported['parity']['max_abs_diff']:.2e}; "
            f"FP16 agreement {rows['fp16']['agreement']:.2f}% max |d| {rows['fp16']['max_abs_diff']:.3g}; "
            f"INT8 agreement {rows['int8']['agreement']:.2f}% top-1 {rows['int8']['top1']:.2f}% (FP32 {rows['fp32']['top1']:.2f}%), "
            f"on {json.loads((run_dir / 'validate.json').read_text())['reference']['samples']} held-out images; "
            f"INT8 params {json.dumps({k: v for k, v in int8.get('params', {}).items() if k != 'precision'}, default=str)[:600]}; "
            f"stages {json.dumps({k: v['seconds'] for k, v in summary['stages'].items()})}"
        )
    assert rows["fp16"]["agreement"] >= 99.9
    assert rows["int8"]["status"] == "ok" and rows["fp32"]["top1"] - rows["int8"]["top1"] <= 0.5 + 1e-9
    for precision in ("fp32", "fp16", "int8"):  # TensorRT-RTX builds ahead of time without a GPU
        engine = json.loads((run_dir / f"model.{precision}.engine.manifest.json").read_text())
        assert (run_dir / f"model.{precision}.engine").stat().st_size > 0 and engine["precision"] == precision
        with capsys.disabled():
            print(
                f"[timm run] {precision} engine: {engine.get('seconds')} s to build, {(run_dir / f'model.{precision}.engine').stat().st_size / 1e6:.1f} MB"
            )
