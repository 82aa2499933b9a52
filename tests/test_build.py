"""build-engine: real TensorRT-RTX engines built on the CPU, manifests, caching and bad input.

The ONNX files are untrained zoo models exported directly (the builder does not care about
weights); FP16 and INT8 variants made directly with ModelOpt check that a model that already has
its precision in the graph builds as it is.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper
from onnx import numpy_helper as nh

import models
from pipeline import build, cuda
from pipeline.artifacts import read_manifest
from pipeline.commands.build import build_engine_main
from pipeline.digest import sha256_file
from pipeline.errors import EdgepipeError
from pipeline.precision import Precision
from pipeline.tensorrt import backend as backendmod
from pipeline.tensorrt import options

DEFAULT_MODEL = "se_resnet"
RTX_DEFAULT_TARGETS = ["8.0", "8.6", "8.9", "12.0", "12.1"]


def export_untrained(name: str, path: Path, dynamic: bool = True) -> Path:
    import torch

    model = models.create(name, num_classes=10, in_chans=1, img_size=32).eval()
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 32, 32),),
        str(path),
        opset_version=17,
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes=axes,
    )
    return path


def quantize_with_modelopt(source: Path, output: Path) -> Path:
    from modelopt.onnx.quantization import quantize

    data = np.random.default_rng(0).random((16, 1, 32, 32), dtype=np.float32)
    quantize(
        str(source), quantize_mode="int8", calibration_data=data, calibration_method="entropy", output_path=str(output)
    )
    return output


def autocast_fp16(source: Path, output: Path) -> Path:
    from modelopt.onnx.autocast import convert_to_mixed_precision

    onnx.save(convert_to_mixed_precision(str(source), low_precision_type="fp16", keep_io_types=True), str(output))
    return output


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    """{"fp32": dynamic fp32, "static": static batch 1, "fp16": AutoCast, "int8": ModelOpt Q/DQ} of the default model."""
    folder = tmp_path_factory.mktemp("onnx")
    fp32 = export_untrained(DEFAULT_MODEL, folder / "model.onnx")
    return {
        "fp32": fp32,
        "static": export_untrained(DEFAULT_MODEL, folder / "static.onnx", dynamic=False),
        "fp16": autocast_fp16(fp32, folder / "prequant.fp16.onnx"),
        "int8": quantize_with_modelopt(fp32, folder / "prequant.int8.onnx"),
    }


@pytest.fixture()
def model_onnx(onnx_files, tmp_path):
    """A private copy of the dynamic fp32 ONNX, so each test has its own engine folder."""
    path = tmp_path / "model.onnx"
    path.write_bytes(onnx_files["fp32"].read_bytes())
    return path


def partial_files(folder: Path) -> list[Path]:
    return list(folder.glob("*.partial"))


# --- what gets built --------------------------------------------------------------------------------


def test_fp32_build_writes_a_real_engine_and_its_manifest(model_onnx):
    result = build.build_engine(model_onnx, precision="fp32")
    engine = model_onnx.with_name("model.fp32.engine")
    assert result["engine"] == str(engine) and result["cached"] is False
    assert result["backend"] == "tensorrt-rtx" and result["precision"] == "fp32"
    assert engine.stat().st_size == result["bytes"] > 100_000
    manifest = read_manifest(engine)
    assert manifest["kind"] == "engine" and manifest["sha256"] == sha256_file(engine)
    assert manifest["inputs"] == {"onnx": sha256_file(model_onnx)}
    assert manifest["backend_version"] == backendmod.get_backend().version
    # Dynamic batch without shape flags: the documented default profile.
    assert manifest["params"]["profiles"] == [
        {"input": {"min": [1, 1, 32, 32], "opt": [1, 1, 32, 32], "max": [64, 1, 32, 32]}}
    ]
    # No GPU here: every TensorRT-RTX target from Ampere on.
    assert manifest["target_compute_capabilities"] == RTX_DEFAULT_TARGETS
    assert manifest["build_seconds"] > 0 and manifest["peak_rss_mib"] > 50
    assert partial_files(model_onnx.parent) == []


def test_same_inputs_reuse_the_engine_and_force_rebuilds(model_onnx):
    first = build.build_engine(model_onnx, precision="fp32")
    engine = Path(first["engine"])
    mtime = engine.stat().st_mtime_ns
    again = build.build_engine(model_onnx, precision="fp32")
    assert again["cached"] is True and again["bytes"] == first["bytes"]
    assert engine.stat().st_mtime_ns == mtime
    forced = build.build_engine(model_onnx, precision="fp32", force=True)
    assert forced["cached"] is False


def test_engine_from_other_inputs_is_kept_without_force(model_onnx, onnx_files, tmp_path):
    engine = tmp_path / "shared.engine"
    build.build_engine(model_onnx, save_engine=engine)
    before = sha256_file(engine)
    with pytest.raises(EdgepipeError, match="exists but was made from other inputs: another ONNX model"):
        build.build_engine(onnx_files["static"], save_engine=engine)
    with pytest.raises(EdgepipeError, match="builder_optimization_level"):
        build.build_engine(model_onnx, save_engine=engine, builder_optimization_level=1)
    assert sha256_file(engine) == before
    assert build.build_engine(onnx_files["static"], save_engine=engine, force=True)["cached"] is False


def test_a_file_that_is_not_an_edgepipe_engine_is_not_overwritten(model_onnx):
    engine = model_onnx.with_name("model.fp32.engine")
    engine.write_bytes(b"someone else's engine")
    with pytest.raises(EdgepipeError, match="no edgepipe manifest"):
        build.build_engine(model_onnx, precision="fp32")
    assert engine.read_bytes() == b"someone else's engine"


@pytest.mark.parametrize("kind", ["fp16", "int8"])
def test_onnx_that_already_has_its_precision_builds_as_it_is(onnx_files, tmp_path, kind):
    source = tmp_path / f"prequant.{kind}.onnx"
    source.write_bytes(onnx_files[kind].read_bytes())
    result = build.build_engine(source)
    assert result["precision"] == kind and result["network_onnx"] == str(source)
    assert Path(result["engine"]).name == f"prequant.{kind}.engine"


def test_int8_onnx_cannot_be_built_as_fp16(onnx_files, tmp_path):
    with pytest.raises(EdgepipeError, match="already INT8; it cannot be built as FP16"):
        build.build_engine(onnx_files["int8"], precision="fp16", save_engine=tmp_path / "x.engine")
    assert not (tmp_path / "x.engine").exists()


def test_static_model_needs_no_profile(onnx_files, tmp_path):
    result = build.build_engine(onnx_files["static"], save_engine=tmp_path / "static.engine")
    assert result["profiles"] == []


def test_explicit_profile_targets_and_controls(model_onnx, tmp_path):
    cache = tmp_path / "timing.cache"
    result = build.build_engine(
        model_onnx,
        save_engine=tmp_path / "tuned.engine",
        shapes={"min": "input:2x1x32x32", "opt": "input:8x1x32x32", "max": "input:16x1x32x32"},
        compute_capability=["8.9", "sm86"],
        mem_pool_size="workspace:512M",
        builder_optimization_level=2,
        timing_cache_file=cache,
        hardware_compatibility_level="none",
    )
    assert result["profiles"] == [{"input": {"min": [2, 1, 32, 32], "opt": [8, 1, 32, 32], "max": [16, 1, 32, 32]}}]
    assert result["compute_capabilities"] == ["8.9", "8.6"]
    params = read_manifest(result["engine"])["params"]
    assert params["memory_pools"] == {"workspace": 512 * 2**20} and params["builder_optimization_level"] == 2
    assert cache.is_file() and cache.stat().st_size > 0


@pytest.mark.parametrize(
    "text, expected",
    [
        ("workspace:1024", {"workspace": 1024 * 2**20}),
        ("workspace:2G", {"workspace": 2 * 2**30}),
        ("workspace:512K,tacticSharedMem:1M", {"workspace": 512 * 2**10, "tacticSharedMem": 2**20}),
    ],
)
def test_mem_pool_size_uses_trtexec_units(text, expected):
    assert options.parse_mem_pool_size(text) == expected


def test_default_engine_names():
    assert build.default_engine_path(Path("runs/model.onnx"), "fp16") == Path("runs/model.fp16.engine")
    assert build.default_engine_path(Path("runs/model.int8.onnx"), "int8") == Path("runs/model.int8.engine")


# --- the commands --------------------------------------------------------------------------------


def test_build_engine_console_script_prints_json(model_onnx):
    runner = CliRunner()
    result = runner.invoke(build_engine_main, [str(model_onnx), "--fp32", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["engine"] == str(model_onnx.with_name("model.fp32.engine"))
    assert {
        "backend",
        "backend_version",
        "precision",
        "seconds",
        "cached",
        "bytes",
        "profiles",
        "compute_capabilities",
    } <= set(payload)
    assert "TensorRT-RTX" in result.stderr  # auto says which backend it chose
    cached = runner.invoke(build_engine_main, ["--onnx", str(model_onnx), "--fp32", "--json"], catch_exceptions=False)
    assert json.loads(cached.stdout)["cached"] is True


def test_edgepipe_build_with_trtexec_spelling(model_onnx, runner):
    from conftest import invoke

    engine = model_onnx.with_name("my.engine")
    result = invoke(
        runner,
        "build",
        model_onnx,
        f"--saveEngine={engine}",
        "--minShapes=input:1x1x32x32",
        "--optShapes=input:4x1x32x32",
        "--maxShapes=input:8x1x32x32",
        "--computeCapability",
        "8.9",
    )
    assert result.exit_code == 0, result.output
    assert engine.is_file() and "my.engine" in result.stdout


def test_build_help_has_an_example(runner):
    result = CliRunner().invoke(build_engine_main, ["--help"])
    assert result.exit_code == 0 and "Example:" in result.output and "--saveEngine" in result.output


# --- bad input: one line, non-zero exit, nothing written -------------------------------------------


def run_cli(*args):
    return CliRunner().invoke(build_engine_main, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result, *needles):
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "Fix:" in lines[0] and "Traceback" not in result.output, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_forcing_standard_tensorrt_says_what_to_install(model_onnx):
    result = run_cli(model_onnx, "--fp16", "--backend", "tensorrt")
    assert_one_line_error(
        result, "TensorRT is not installed", "python3-libnvinfer", "pip install tensorrt", "edgepipe[rtx]"
    )
    assert not list(model_onnx.parent.glob("*.engine"))


@pytest.mark.parametrize("content", [b"not a protobuf at all \x00\xff", "truncated"])
def test_corrupt_or_truncated_onnx(model_onnx, content):
    if content == "truncated":
        content = model_onnx.read_bytes()[: model_onnx.stat().st_size // 2]
    model_onnx.write_bytes(content)
    assert_one_line_error(run_cli(model_onnx), "model.onnx")
    assert not list(model_onnx.parent.glob("*.engine*"))


def test_missing_onnx(tmp_path):
    assert_one_line_error(run_cli(tmp_path / "nope.onnx"), "does not exist")


def quantized_conv_with_int32_bias(path: Path) -> Path:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2, 8, 8])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 8, 8])
    inits = [
        nh.from_array(np.array(0.02, np.float32), "xs"),
        nh.from_array(np.array(0, np.int8), "xz"),
        nh.from_array(np.ones((4, 2, 3, 3), np.int8), "wq"),
        nh.from_array(np.full((4,), 0.01, np.float32), "ws"),
        nh.from_array(np.zeros(4, np.int8), "wz"),
        nh.from_array(np.arange(4, dtype=np.int32), "bq"),
        nh.from_array(np.full((4,), 2e-4, np.float32), "bs"),
        nh.from_array(np.zeros(4, np.int32), "bz"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "xs", "xz"], ["xq"], name="q_in"),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="dq_in"),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], name="dq_w", axis=0),
        helper.make_node("DequantizeLinear", ["bq", "bs", "bz"], ["bd"], name="dq_bias", axis=0),
        helper.make_node("Conv", ["xd", "wd", "bd"], ["out"], name="conv", pads=[1, 1, 1, 1]),
    ]
    onnx.save(
        helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)]),
        str(path),
    )
    return path


def test_parser_rejection_names_node_op_reason_and_fix(tmp_path):
    source = quantized_conv_with_int32_bias(tmp_path / "qbias.onnx")
    assert_one_line_error(run_cli(source), "node 'dq_bias' (DequantizeLinear)", "Int32", "no quantized bias")
    assert not list(tmp_path.glob("*.engine*"))


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--maxShapes", "input:8x3x32x32"], "dimension 1 is fixed at 1"),
        (["--optShapes", "image:4x1x32x32"], "does not have (inputs: input)"),
        (
            ["--minShapes", "input:8x1x32x32", "--optShapes", "input:4x1x32x32", "--maxShapes", "input:2x1x32x32"],
            "out of order",
        ),
        (["--maxShapes", "input:8x1x32"], "has 3 dimensions"),
        (["--maxShapes", "input=8x1x32x32"], "is not NAME:DIMS"),
        (["--memPoolSize", "workspace:lots"], "is not POOL:SIZE"),
        (["--computeCapability", "current"], "needs a GPU"),
        (["--computeCapability", "9.0"], "cannot build for compute capability 9.0"),
        (["--useDLACore", "0"], "--useDLACore is not available with TensorRT-RTX"),
        (["--versionCompatible"], "--versionCompatible is not available with TensorRT-RTX"),
        (["--int8", "--legacy-precision"], "drop --legacy-precision"),
        (["--calib", "calib.npz"], "only used for INT8"),
    ],
)
def test_bad_flags(model_onnx, flags, needle):
    if "current" in flags and cuda.current_compute_capability():
        pytest.skip("this machine has a GPU")
    assert_one_line_error(run_cli(model_onnx, *flags), needle)
    assert not list(model_onnx.parent.glob("*.engine*"))


def test_shapes_on_a_static_model_must_match_it(onnx_files):
    with pytest.raises(EdgepipeError, match="dimension 0 is fixed at 1"):
        build.build_engine(
            onnx_files["static"],
            shapes={"max": "input:4x1x32x32"},
            save_engine=onnx_files["static"].with_name("s4.engine"),
        )


def test_unwritable_output_path(model_onnx, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert_one_line_error(run_cli(model_onnx, "--saveEngine", blocker / "model.engine"), "cannot create folder")


def test_ctrl_c_during_the_real_build_leaves_no_engine(model_onnx, monkeypatch):
    """A real SIGINT arrives while the builder runs: the build is cancelled, nothing is written."""
    previous = build.build_engine(model_onnx, save_engine=model_onnx.with_name("keep.engine"))
    handler_before = signal.getsignal(signal.SIGINT)
    steps = []

    def press_ctrl_c(status, be, phase, step):
        steps.append(phase)
        if len(steps) == 2:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(build.engine, "_show", press_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        build.build_engine(model_onnx, save_engine=previous["engine"], force=True, builder_optimization_level=1)
    assert sha256_file(previous["engine"]) == read_manifest(previous["engine"])["sha256"]  # the old engine is intact
    steps.clear()
    with pytest.raises(KeyboardInterrupt):
        build.build_engine(model_onnx, precision="fp32")
    assert not model_onnx.with_name("model.fp32.engine").exists()
    assert partial_files(model_onnx.parent) == []
    assert signal.getsignal(signal.SIGINT) is handler_before  # handler restored


def test_ctrl_c_exits_130_on_the_command_line(model_onnx, monkeypatch):
    monkeypatch.setattr(build.engine, "_show", lambda *a: os.kill(os.getpid(), signal.SIGINT))
    result = run_cli(model_onnx, "--fp32")
    assert result.exit_code == 130 and "interrupted" in result.stderr
    assert not list(model_onnx.parent.glob("*.engine*"))


# --- the runtime check ------------------------------------------------------------------------------


def test_check_engine_runtime(model_onnx):
    result = build.build_engine(model_onnx, compute_capability=["8.6", "8.9"])
    engine = Path(result["engine"])
    assert backendmod.check_engine_runtime(engine, "tensorrt-rtx", "8.9")["precision"] == "fp32"
    with pytest.raises(EdgepipeError, match="targets compute capability 8.6, 8.9, but this GPU is 12.0"):
        backendmod.check_engine_runtime(engine, backendmod.get_backend(), "12.0")
    manifest_file = Path(str(engine) + ".manifest.json")
    manifest = json.loads(manifest_file.read_text())
    manifest_file.write_text(json.dumps({**manifest, "backend_version": "0.9.0"}))
    with pytest.raises(EdgepipeError, match="built with TensorRT-RTX 0.9.0, but this runtime is TensorRT-RTX"):
        backendmod.check_engine_runtime(engine, "tensorrt-rtx", None)
    manifest_file.write_text(json.dumps(manifest))
    engine.write_bytes(engine.read_bytes()[:1000])
    with pytest.raises(EdgepipeError, match="does not match its manifest"):
        backendmod.check_engine_runtime(engine, "tensorrt-rtx", "8.9")
    manifest_file.unlink()
    with pytest.raises(EdgepipeError, match="no edgepipe (engine )?manifest"):
        backendmod.check_engine_runtime(engine, "tensorrt-rtx", "8.9")


# --- through the precision stage ----------------------------------------------------------------


@pytest.fixture()
def trained_onnx(exported, tmp_path):
    """A private copy of the trained, exported default model (it carries edgepipe's metadata)."""
    path = tmp_path / "trained.onnx"
    path.write_bytes(Path(exported).read_bytes())
    return path


def test_fp16_flag_converts_then_builds_and_reuses_the_fp16_onnx(trained_onnx):
    result = run_cli(trained_onnx, "--fp16", "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    fp16_onnx = trained_onnx.with_name("trained.fp16.onnx")
    assert payload["precision"] == "fp16" and payload["network_onnx"] == str(fp16_onnx)
    assert payload["engine"] == str(trained_onnx.with_name("trained.fp16.engine"))
    mtime = fp16_onnx.stat().st_mtime_ns
    forced = run_cli(trained_onnx, "--fp16", "--force", "--json")
    assert json.loads(forced.stdout)["cached"] is False and "reusing" in forced.stderr
    assert fp16_onnx.stat().st_mtime_ns == mtime


def test_int8_flag_quantizes_with_the_default_calibration_set_then_builds(trained_onnx):
    result = build.build_engine(trained_onnx, precision="int8")
    assert result["precision"] == "int8" and Path(result["network_onnx"]).name == "trained.int8.onnx"
    # The engine records the calibration set the INT8 ONNX was calibrated on, as the precision stage records it.
    drawn = read_manifest(result["network_onnx"])["inputs"]["calibration"]
    assert len(drawn) == 64 and read_manifest(result["engine"])["inputs"]["calibration"] == drawn
    again = build.build_engine(trained_onnx, precision="int8")
    assert again["cached"] is True


def test_calibration_set_for_another_model_is_refused(trained_onnx):
    import calibration

    wrong = calibration.CalibrationSet(
        np.zeros((64, 3, 8, 8), np.float32), np.zeros(64, np.int64), {"mean": [0.5], "std": [0.5]}
    )
    with pytest.raises(EdgepipeError, match="calibration images are 3x8x8"):
        build.build_engine(trained_onnx, precision="int8", calib=wrong)
    assert not list(trained_onnx.parent.glob("*.engine*")) and not list(trained_onnx.parent.glob("*.int8.onnx"))


# --- every zoo model, every precision (about 25 s for the whole zoo, so in the fast set) -----------


@pytest.mark.parametrize("name", models.names())
def test_every_zoo_model_builds_at_every_precision(name, tmp_path):
    fp32 = export_untrained(name, tmp_path / f"{name}.onnx")
    sources = {
        "fp32": fp32,
        "fp16": autocast_fp16(fp32, tmp_path / f"{name}.fp16.onnx"),
        "int8": quantize_with_modelopt(fp32, tmp_path / f"{name}.int8.onnx"),
    }
    for precision, source in sources.items():
        result = build.build_engine(source)
        assert result["precision"] == precision and Path(result["engine"]).stat().st_size > 10_000


# --- GPU -------------------------------------------------------------------------------------------------


def _gpu_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_available(), reason="needs an NVIDIA GPU")
def test_build_for_this_gpu_and_deserialize(model_onnx):
    result = build.build_engine(model_onnx, compute_capability=["current"])
    be = backendmod.get_backend()
    device = cuda.current_compute_capability()
    backendmod.check_engine_runtime(result["engine"], be, device)
    engine = be.deserialize(Path(result["engine"]).read_bytes())
    assert engine.num_io_tensors == 2


def test_int8_with_no_images_is_refused_before_any_progress(model_onnx):
    """A model that records no training data and no --calib/--data: one line, nothing printed before it, nothing written."""
    before = sorted(model_onnx.parent.iterdir())
    result = run_cli(model_onnx, "--int8")
    assert_one_line_error(result, "--int8 needs calibration images", "--calib calib.npz", "--data DIR")
    assert result.stderr.strip().splitlines() == [
        line for line in result.stderr.splitlines() if line.startswith("Error:")
    ]
    assert sorted(model_onnx.parent.iterdir()) == before


def test_build_settings_are_parsed_once_into_values():
    settings = build.BuildSettings.parse(
        precision="fp16",
        shapes={"opt": "input:8x1x32x32"},
        mem_pool_size="workspace:2G",
        hardware_compatibility_level="ampere_plus",
        compute_capability=["8.6"],
        allow_gpu_fallback=False,
    )
    assert settings.precision is Precision.FP16
    assert settings.shapes == {"min": {}, "opt": {"input": (8, 1, 32, 32)}, "max": {}}
    assert settings.memory_pools == {"workspace": 2 * 2**30} and settings.hardware_compatibility == "ampere+"
    assert settings.compute_capability == ("8.6",)
    with pytest.raises(Exception, match="frozen|cannot assign"):
        settings.precision = None
    with pytest.raises(TypeError, match="unknown build settings: fp16_flag"):
        build.BuildSettings.parse(fp16_flag=True)
    with pytest.raises(EdgepipeError, match="only used for INT8"):
        build.BuildSettings.parse(precision="fp16", calib="calib.npz")
    with pytest.raises(EdgepipeError, match="--optShapes"):
        build.BuildSettings.parse(shapes={"opt": "input=8x1"})
