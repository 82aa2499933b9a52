import os

import click

from pipeline.commands import options
from pipeline.defaults import (
    BUDGET_DEFAULT,
    DEFAULT_MAX_DROP,
    DEFAULT_MIN_AGREEMENT,
    DEFAULT_MIN_COSINE,
    HIGH_PRECISIONS,
    MAP_ERROR_SHARE,
)
from pipeline.errors import EdgepipeError
from pipeline.precision import Precision
from pipeline.progress import out

SMOOTHQUANT_HELP = "SmoothQuant: LayerNorm outlier channels moved into the MatMul weights (default: kept where better)."


def bounded(text: str, flag: str, what: str, low: float, high: float, example: str, unit: str = "") -> float:
    """The flag's number (``unit`` after it allowed) from ``low`` to ``high``."""
    value = options.as_number(str(text).strip().rstrip(unit))
    if not low <= value <= high:
        raise EdgepipeError(
            f"{flag} {text!r} is not {what} from {low:g} to {high:g}", fix=f"pass e.g. {flag} {example}"
        )
    return value


@click.command("quantize", cls=options.EdgepipeCommand)
@click.argument("onnx_model", metavar="MODEL.onnx", type=click.Path(dir_okay=False))
@options.precision_flags(
    {
        Precision.FP16: "FP16 (ModelOpt AutoCast): I/O and overflow-prone ops stay FP32.",
        Precision.INT8: "INT8 with explicit Q/DQ (ModelOpt PTQ), calibrated on --calib.",
    },
    required=True,
)
@click.option(
    "-o", "--output", required=True, metavar="OUT.onnx", help="ONNX file to write (a manifest is written beside it)."
)
@click.option(
    "--calib",
    metavar="CALIB.npz|DIR",
    help="Calibration images: a set from 'edgepipe calibrate', a folder of images or an .npz with pixels x (read through "
    "the model's preprocessing), or an .npz with model inputs (fed as they are; y optional). "
    "Default: 512 images drawn from the calibration pool of --data, or of the data the model records.",
)
@click.option(
    "--method",
    default="auto",
    metavar="METHOD",
    help="INT8 activation ranges: auto (one calibration pass; max, percentile-99.99, mse and trt-entropy each built and "
    "checked, the best kept, bias correction tried on it), max, percentile-P (0 < P <= 100, e.g. percentile-99.99), "
    "mse, trt-entropy (TensorRT's 2048-bin entropy), or entropy (ModelOpt's own calibrator).",
)
@click.option(
    "--bias-correction/--no-bias-correction",
    default=None,
    help="Correct each quantized Conv/Gemm output channel's mean INT8 error in its bias (default: auto tries it and "
    "keeps it where it does better; a named --method does not).",
)
@click.option("--smoothquant/--no-smoothquant", default=None, help=SMOOTHQUANT_HELP)
@click.option(
    "--high-precision",
    type=click.Choice(HIGH_PRECISIONS),
    default="fp16",
    help="Precision of the INT8 model's non-quantized ops (fp16 builds faster engines).",
)
@click.option(
    "--exclude-op", "exclude_ops", multiple=True, metavar="OP", help="Op type to keep out of INT8 (repeatable)."
)
@click.option(
    "--exclude-node", "exclude_nodes", multiple=True, metavar="NODE", help="Node name to keep out of INT8 (repeatable)."
)
@click.option(
    "--include-op",
    "include_ops",
    multiple=True,
    metavar="OP",
    help="Quantize an op type edgepipe keeps out of INT8 by default (Sigmoid, Softmax).",
)
@options.max_drop_option()
@click.option(
    "--min-agreement",
    metavar="PCT",
    callback=options.callback(bounded, "--min-agreement", "a percentage", 0, 100, "99", "%"),
    help="INT8 accuracy budget without labels: the least argmax agreement with FP32 in percent (per position for sequence outputs); "
    "the most sensitive nodes stay in higher precision until it holds.",
)
@click.option(
    "--min-cosine",
    metavar="COS",
    callback=options.callback(bounded, "--min-cosine", "a cosine", -1, 1, "0.99"),
    help="INT8 accuracy budget for outputs that are neither classes nor sequences (maps, boxes): the least cosine "
    f"with FP32 of every output. Given no budget, INT8 keeps --max-drop {DEFAULT_MAX_DROP:g} for labelled classes, "
    f"--min-agreement {DEFAULT_MIN_AGREEMENT:g} for unlabelled classes and sequences, --min-cosine "
    f"{DEFAULT_MIN_COSINE:g} for the rest (held at {1 - (1 - DEFAULT_MIN_COSINE) * MAP_ERROR_SHARE:g} on the check "
    "images, so that images they do not show hold it too; a --min-cosine given is checked as given); --max-drop none: "
    "plain PTQ.",
)
@options.input_size_option(
    help="Size to convert and check a model with dynamic height and width at: HxW, or CxHxW to also check its channels "
    "(default: the model's, or the images')."
)
@options.data_option(
    help="Images to check against FP32 on (default: the data the model records): 'digits', a folder of images (class "
    "sub-folders for labels) or an .npz with pixels x, read through the model's preprocessing, or an .npz with model "
    "inputs [, y]; split into a calibration pool and held-out images. "
    "Without any, FP16 is checked on seeded synthetic inputs."
)
@options.preprocess_options
@click.option(
    "--qat",
    type=click.IntRange(min=1),
    metavar="EPOCHS",
    help="With --int8: quantization-aware training instead of PTQ alone: ModelOpt's PyTorch INT8 quantization, "
    "calibrated, then fine-tuned EPOCHS passes over the calibration images, distilled from the FP32 model. Needs the "
    "PyTorch model the ONNX was exported from (--checkpoint).",
)
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False),
    metavar="CKPT|WEIGHTS",
    help="For --qat: the checkpoint or weights file MODEL.onnx was exported from (its sha256 is recorded in the ONNX).",
)
@options.model_options(
    help="For --qat: the model of a --checkpoint that names your own code (--model again, or --trust-model-code)."
)
@options.force_option()
@options.json_option
@click.pass_context
def quantize_command(
    ctx, onnx_model, precision, output, input_size, qat, checkpoint, model, code, force, as_json, **int8
):
    """Make an FP16 or INT8 (Q/DQ) ONNX model and check it on the held-out split.

    Any single-image-input ONNX works, with or without edgepipe's metadata. The result obeys
    TensorRT's Q/DQ rules and is measured against the FP32 model on every output: on the held-out
    split of an edgepipe model or of your images (--data), else on the calibration images, or (FP16
    only) seeded synthetic inputs. INT8 never calibrates on random data.

    \b
    Example:
      edgepipe quantize runs/se/model.onnx --fp16 -o runs/se/model.fp16.onnx
      edgepipe quantize runs/se/model.onnx --int8 --calib runs/se/calib.npz --max-drop 0.5 -o runs/se/model.int8.onnx
      edgepipe quantize recognizer.onnx --int8 --data lines.npz --min-agreement 99 -o recognizer.int8.onnx
      edgepipe quantize resnet.onnx --int8 --data photos/ --labels labels.txt --resize 256 --crop 224 --max-drop 1 -o resnet.int8.onnx
      edgepipe quantize runs/se/model.onnx --int8 --qat 2 --checkpoint runs/se/se_resnet.pt --calib runs/se/calib.npz -o runs/se/model.qat.onnx
    """
    # quantizing runs ModelOpt and ONNX Runtime: imported when the command runs, so --help starts at once.
    from pipeline import quantize

    data, preprocess, labels, workers = (int8.pop(key) for key in ("data", "preprocess", "labels", "workers"))
    options.check_folder_flags(
        preprocess, labels, data is not None or bool(int8["calib"] and os.path.isdir(int8["calib"]))
    )
    reading = {
        "data": data,
        "size": options.onnx_input_hw(input_size, onnx_model),
        "size_flag": "--input-size",
        "preprocess": preprocess if preprocess.given else None,
        "labels": labels,
        "workers": workers,
    }
    pytorch = {"--checkpoint": checkpoint, "--model": model, "--trust-model-code": code.trust or None}
    _check_qat_flags(precision, qat, pytorch, _given(ctx, int8, ("exclude_ops", "exclude_nodes", "include_ops")))
    if qat is not None:
        budget = {"max_drop": int8["max_drop"], "min_agreement": int8["min_agreement"]}
        pytorch_model = {"model_name": model, "trust_model_code": code.trust}
        result = quantize.to_int8_qat(
            onnx_model, output, qat, checkpoint, int8["calib"], force, **budget, **pytorch_model, **reading
        )
    elif precision is Precision.FP16:
        int8["method"] = None if int8["method"] == "auto" else int8["method"]
        given = _given(ctx, int8, set(int8) - {"high_precision"})  # --high-precision has a default
        if given:
            raise EdgepipeError(
                f"{', '.join(given)} only {'applies' if len(given) == 1 else 'apply'} to --int8",
                fix="drop them, or use --int8",
            )
        result = quantize.to_fp16(onnx_model, output, force=force, **reading)
    else:
        if ctx.get_parameter_source("max_drop") is click.core.ParameterSource.DEFAULT:
            int8["max_drop"] = BUDGET_DEFAULT  # none given: the default budget for the model's outputs
        result = quantize.to_int8(onnx_model, output, force=force, **int8, **reading)
    options.emit(result, as_json, _print_result)


def _given(ctx: click.Context, values: dict, names) -> list[str]:
    """The flags among ``names`` that hold a value, named and ordered as --help lists them."""
    return [p.opts[0] for p in ctx.command.params if p.name in names and values[p.name] not in (None, ())]


def _check_qat_flags(precision, qat, pytorch, ptq_given: list[str]) -> None:
    """--qat goes with --int8 (and the PyTorch model's flags only with it); the flags naming ONNX nodes and ops do not."""
    if qat is None:
        given = [flag for flag, value in pytorch.items() if value is not None]
        if given:
            raise EdgepipeError(f"{', '.join(given)} only apply to --qat", fix="drop them, or add --int8 --qat EPOCHS")
        return
    if precision is not Precision.INT8:
        raise EdgepipeError("--qat makes an INT8 model", fix="use --int8 --qat EPOCHS")
    if ptq_given:
        raise EdgepipeError(
            f"{', '.join(ptq_given)} name ONNX nodes and ops, which --qat does not quantize one by one "
            "(ModelOpt's PyTorch INT8 config quantizes every Conv and Linear)",
            fix="drop them, or drop --qat for post-training quantization",
        )


def _print_result(r):
    top1 = (
        f"top-1 {r['top1']:.2f}% ({r['delta']:+.2f} points vs FP32 {r['reference_top1']:.2f}%), "
        if r.get("top1") is not None
        else ""
    )
    check = r.get("check") or {}
    where = check.get("text") or f"{r['samples']} held-out images"
    hint = f"; {check['hint']}" if check.get("hint") else ""
    kept = ", ".join(r.get("kept_nodes") or [])
    if r.get("kept_op_types"):
        kept = f"whole op types {', '.join(r['kept_op_types'])} ({len(r['kept_nodes'])} nodes)"
    kept = f"; kept in higher precision: {kept}" if kept else ""
    macs = f"; {r['macs']['int8_share']:.1f}% of MACs in INT8" if r.get("macs") else ""
    qat = r.get("qat")
    if qat:
        macs += f"; QAT {qat['epochs']} epoch(s): agreement {qat['before']['agreement']:.2f}% before (PTQ), {qat['after']['agreement']:.2f}% after"
    macs += f"; ranges: {r['method']}" if r.get("method") else ""
    outputs = r.get("outputs") or {}
    others = "".join(f"; {name}: cosine {o['cosine']:.5f}" for name, o in list(outputs.items())[1:])
    out.print(
        f"{r['onnx']}: {r['precision'].upper()} in {r['seconds']:.1f} s; on {where}: {top1}agreement {r['agreement']:.2f}%, "
        f"max abs diff {r['max_abs_diff']:.3g}, cosine {r['cosine']:.5f}{others}{kept}{macs}{hint}",
        soft_wrap=True,
    )
