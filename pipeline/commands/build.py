import copy
import re

import click

from pipeline.commands import options
from pipeline.errors import EdgepipeError
from pipeline.precision import Precision
from pipeline.progress import out
from pipeline.tensorrt.backend import BACKENDS
from pipeline.tensorrt.options import HARDWARE_COMPATIBILITY, SHAPE_KINDS, BuildSettings

_SHAPES = "NAME:DIMS[,NAME:DIMS...]"


def _trtexec(flag: str, metavar: str | None, help: str, dest: str | None = None, **kwargs):
    """A build control spelt as trtexec spells it (``--useDLACore``), passed on in snake case (``use_dla_core``)."""
    dest = dest or re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", flag[2:]).lower()
    return click.option(flag, dest, default=None, metavar=metavar, help=help, **kwargs)


@click.command(
    "build",
    cls=options.EdgepipeCommand,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.argument("onnx_file", required=False, metavar="MODEL.onnx", type=click.Path(dir_okay=False))
@_trtexec("--onnx", "MODEL.onnx", "The ONNX model (trtexec spelling; same as the argument).", dest="onnx_option")
@options.precision_flags(
    {
        Precision.FP16: "FP16 engine: converts the ONNX to FP16 first (MODEL.fp16.onnx beside the engine).",
        Precision.INT8: "INT8 engine: quantizes the ONNX with Q/DQ nodes first (MODEL.int8.onnx beside the engine).",
        Precision.FP32: "FP32 engine. Without a precision flag the model builds at the precision it has.",
    }
)
@click.option(
    "--calib",
    metavar="CALIB.npz|DIR",
    type=click.Path(),
    help="Calibration images for --int8: a set from 'edgepipe calibrate', a folder of images or an .npz with pixels x "
    "(read through the model's preprocessing), or an .npz with model inputs (fed as they are). "
    "Default: drawn from the calibration pool of the data the model records (another model needs --calib or --data).",
)
@options.data_option(
    help="Your images to check the FP16/INT8 model against FP32 on (and draw INT8 calibration from): for a model edgepipe did not "
    "export, a folder of images or an .npz with pixels x, read through its preprocessing, or an .npz with model inputs [, y]. "
    "Default: the held-out data of an edgepipe model; seeded synthetic inputs for FP16 of another model."
)
@options.preprocess_options
@_trtexec("--saveEngine", "PATH", "Engine file to write. Default: MODEL.<precision>.engine beside the ONNX.")
@click.option(
    "--backend",
    type=click.Choice(["auto", *BACKENDS]),
    default="auto",
    help="auto: standard TensorRT where installed, else TensorRT-RTX.",
)
@_trtexec("--minShapes", _SHAPES, "Smallest input shapes of the profile, e.g. input:1x1x32x32.")
@_trtexec("--optShapes", _SHAPES, "Shapes the engine is tuned for.")
@_trtexec("--maxShapes", _SHAPES, "Largest input shapes. Default for a dynamic batch: 1 (min), 1 (opt), 64 (max).")
@_trtexec("--memPoolSize", "POOL:SIZE[,...]", "Memory pool limits, e.g. workspace:1024 (MiB; K, M, G suffixes).")
@_trtexec(
    "--builderOptimizationLevel",
    None,
    "0 (fastest build) to 5 (most tuning); backend default 3.",
    type=click.IntRange(0, 5),
)
@_trtexec("--timingCacheFile", "PATH", "Timing cache to read and update.")
@_trtexec("--useDLACore", "N", "Run on DLA core N (Jetson, standard TensorRT).", type=int)
@_trtexec("--allowGPUFallback", None, "With --useDLACore: run layers DLA lacks on the GPU.", is_flag=True)
@_trtexec(
    "--hardwareCompatibilityLevel",
    None,
    "Engines that run on other GPUs (ampere+: any Ampere or newer).",
    type=click.Choice(list(HARDWARE_COMPATIBILITY), case_sensitive=False),
)
@_trtexec(
    "--versionCompatible", None, "Engine loadable by later TensorRT releases of the same major version.", is_flag=True
)
@click.option(
    "--computeCapability",
    "compute_capability",
    multiple=True,
    metavar="X.Y",
    help="TensorRT-RTX target GPU, repeatable (e.g. 8.6, 8.9, 12.0, or 'current'). "
    "Default: this GPU; without a GPU every target from 8.0 on.",
)
@click.option(
    "--legacy-precision",
    is_flag=True,
    help="TensorRT <= 10.x: use the builder's FP16/INT8 flags and an entropy calibrator instead of FP16/Q-DQ ONNX.",
)
@click.option("--verbose", is_flag=True, help="Print the builder's log on stderr.")
@options.force_option()
@options.json_option
def build_command(onnx_file, onnx_option, save_engine, force, as_json, **flags):
    """Build a TensorRT or TensorRT-RTX engine from an ONNX model, like trtexec.

    The engine gets a manifest beside it (backend, version, precision, inputs' sha256, profiles,
    targets, build time and memory). Building again with the same inputs and flags reuses it;
    an engine made from other inputs is kept unless you pass --force. --fp16/--int8 first write
    model.fp16.onnx / model.int8.onnx beside the engine and reuse it while its manifest records the
    same ONNX and settings; a file of that name made otherwise (edgepipe quantize with other flags)
    is never overwritten: the build writes model.int8.<key>.onnx instead and says so.

    \b
    Example:
      build-engine model.onnx --fp16
      build-engine model.onnx --int8 --calib calib.npz --saveEngine model.int8.engine
      build-engine resnet.onnx --int8 --data photos/ --resize 256 --crop 224 --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225
      build-engine dynamic.onnx --fp16 --minShapes image:1x3x160x160 --optShapes image:8x3x224x224 --maxShapes image:32x3x320x320
      edgepipe build model.onnx --minShapes input:1x1x32x32 --optShapes input:8x1x32x32 --maxShapes input:32x1x32x32
    """
    if onnx_file and onnx_option and onnx_file != onnx_option:
        raise EdgepipeError(
            "the ONNX model is given twice, as the argument and as --onnx",
            fix="give it once, as the argument or as --onnx",
        )
    onnx_path = onnx_file or onnx_option
    if not onnx_path:
        command = click.get_current_context().command_path
        raise EdgepipeError("missing the ONNX model", fix=f"name it: {command} MODEL.onnx [--fp16 | --int8 | --fp32]")
    # building reads the ONNX (onnx, numpy): imported when the command runs, so --help starts at once.
    from pipeline.build import build_engine

    preprocess, labels, workers = flags.pop("preprocess"), flags.pop("labels"), flags.pop("workers")
    shapes = {kind: flags.pop(f"{kind}_shapes") for kind in SHAPE_KINDS}
    reading = {"preprocess": preprocess if preprocess.given else None, "labels": labels, "workers": workers}
    settings = BuildSettings.parse(reading=reading, shapes=shapes, **flags)  # trtexec's controls, by their names
    options.check_folder_flags(preprocess, labels, settings.folder_given)
    result = build_engine(onnx_path, settings, save_engine=save_engine, force=force)
    options.emit(result, as_json, _print_human)


def _print_human(r):
    targets = f", targets {', '.join(r['compute_capabilities'])}" if r["compute_capabilities"] else ""
    what = (
        f"up to date ({r['backend_version']}, {r['precision']}), reused in {r['seconds']:.2f} s"
        if r["cached"]
        else f"{r['backend']} {r['backend_version']}, {r['precision']}, {r['bytes'] / 2**20:.1f} MiB{targets}; "
        f"built in {r['build_seconds']:.2f} s (peak host memory {r['peak_rss_mib']:.0f} MiB)"
    )
    out.print(f"{r['engine']}: {what}{_check_text(r.get('check'))}", soft_wrap=True)


def _check_text(check):
    """ "; checked against FP32 on 32 synthetic inputs ...: agreement 100.00%, max abs diff 0.0013" """
    if not check:
        return ""
    top1 = f"top-1 {check['top1']:.2f}% ({check['delta']:+.2f} points), " if check.get("top1") is not None else ""
    macs = f", {check['macs']['int8_share']:.1f}% of MACs in INT8" if check.get("macs") else ""
    hint = f"; {check['hint']}" if check.get("hint") else ""
    return (
        f"; {check['precision'].upper()} checked against FP32 on {check['on']}: {top1}agreement {check['agreement']:.2f}%, "
        f"max abs diff {check['max_abs_diff']:.3g}{macs}{hint}"
    )


# The standalone `build-engine` console script: the same command under its own name.
build_engine_main = copy.copy(build_command)
build_engine_main.name = "build-engine"
