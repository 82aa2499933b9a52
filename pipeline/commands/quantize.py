"""edgepipe quantize: an FP16 or INT8 (Q/DQ) ONNX model, checked on the held-out split."""

import click

from pipeline import quantize
from pipeline.commands.options import EdgepipeCommand, data_option, emit, force_option, json_option, max_drop_option, precision_flags
from pipeline.errors import EdgepipeError
from pipeline.precision import Precision
from pipeline.progress import out


@click.command("quantize", cls=EdgepipeCommand)
@click.argument("onnx_model", metavar="MODEL.onnx", type=click.Path(dir_okay=False))
@precision_flags({
    Precision.FP16: "FP16 (ModelOpt AutoCast): I/O and overflow-prone ops stay FP32.",
    Precision.INT8: "INT8 with explicit Q/DQ (ModelOpt PTQ), calibrated on --calib.",
}, required=True)
@click.option("-o", "--output", required=True, metavar="OUT.onnx", help="ONNX file to write (a manifest is written beside it).")
@click.option("--calib", default=None, metavar="CALIB.npz", help="Calibration set from 'edgepipe calibrate'. Default: 512 images drawn from the model's training split.")
@click.option("--method", type=click.Choice(quantize.METHODS), default="entropy", show_default=True, help="INT8 calibration method.")
@click.option("--high-precision", type=click.Choice(quantize.HIGH_PRECISIONS), default="fp16", show_default=True, help="Precision of the INT8 model's non-quantized ops (fp16 builds faster engines).")
@click.option("--exclude-op", multiple=True, metavar="OP", help="Op type to keep out of INT8 (repeatable).")
@click.option("--exclude-node", multiple=True, metavar="NODE", help="Node name to keep out of INT8 (repeatable).")
@click.option("--include-op", multiple=True, metavar="OP", help="Quantize an op type edgepipe keeps out of INT8 by default (Sigmoid, Softmax).")
@max_drop_option()
@data_option
@force_option
@json_option
def quantize_command(onnx_model, precision, output, calib, method, high_precision, exclude_op, exclude_node, include_op, max_drop, data, force, as_json):
    """Make an FP16 or INT8 (Q/DQ) ONNX model and check it on the held-out split.

    The result obeys TensorRT's Q/DQ rules and is measured against the FP32 model (proven equal
    to PyTorch by export): top-1, change in points, top-1 agreement, logit differences.

    \b
    Example:
      edgepipe quantize runs/se/model.onnx --fp16 -o runs/se/model.fp16.onnx
      edgepipe quantize runs/se/model.onnx --int8 --calib runs/se/calib.npz --max-drop 0.5 -o runs/se/model.int8.onnx
    """
    if precision is Precision.FP16:
        int8_only = {"--calib": calib, "--exclude-op": exclude_op, "--exclude-node": exclude_node, "--include-op": include_op, "--max-drop": max_drop}
        given = [flag for flag, value in int8_only.items() if value is not None and value != ()]
        if given:
            raise EdgepipeError(f"{', '.join(given)} only {'applies' if len(given) == 1 else 'apply'} to --int8", fix="drop them, or use --int8")
        result = quantize.to_fp16(onnx_model, output, force=force, data=data)
    else:
        result = quantize.to_int8(
            onnx_model, output, calib=calib, method=method, exclude_ops=exclude_op, exclude_nodes=exclude_node,
            include_ops=include_op, high_precision=high_precision, max_drop=max_drop, data=data, force=force,
        )
    emit(result, as_json, _print_result)


def _print_result(r):
    kept = f"; kept in higher precision: {', '.join(r['kept_nodes'])}" if r.get("kept_nodes") else ""
    out.print(
        f"{r['onnx']}: {r['precision'].upper()} in {r['seconds']:.1f} s; on {r['samples']} held-out images: top-1 {r['top1']:.2f}% "
        f"({r['delta']:+.2f} points vs FP32 {r['reference_top1']:.2f}%), agreement {r['agreement']:.2f}%, "
        f"max abs diff {r['max_abs_diff']:.3g}, cosine {r['cosine']:.5f}{kept}", markup=False,
    )
