"""edgepipe validate: every artifact against the reference on the held-out split."""

import click
from rich.table import Table

from pipeline.commands.options import EdgepipeCommand, data_option, emit, json_option
from pipeline.progress import out
from pipeline.validate import validate


@click.command("validate", cls=EdgepipeCommand)
@click.option("--reference", "--checkpoint", "reference", default=None, metavar="CKPT|MODEL.onnx",
              help="The FP32 model every artifact is compared with: the PyTorch checkpoint, or an FP32 .onnx on ONNX Runtime. "
              "Default: the first FP32 .onnx among the artifacts.")
@click.argument("artifacts", nargs=-1, required=True, metavar="ARTIFACT...")
@data_option
@json_option
def validate_command(reference, artifacts, data, as_json):
    """Compare artifacts (ONNX at any precision, engines) with PyTorch on the held-out split.

    One row per artifact: precision, top-1, change vs PyTorch in points, top-1 agreement, max and
    mean abs logit difference, cosine similarity. An artifact that cannot be run is a row with
    status "error"; the exit code is then 1.

    \b
    Example:
      edgepipe validate --reference runs/se/se_resnet.pt runs/se/model.onnx runs/se/model.fp16.onnx runs/se/model.int8.onnx
    """
    result = validate(reference, artifacts, data=data)
    emit(result, as_json, _print_table, failed=not result["ok"])


def _print_table(result):
    ref = result["reference"]
    table = Table(title=f"{result['model']} on {ref['samples']} held-out images; PyTorch top-1 {ref['top1']:.2f}%")
    for column in ("artifact", "precision", "top-1 %", "Δ pts", "agreement %", "max |Δ|", "mean |Δ|", "cosine", "status"):
        table.add_column(column, justify="left" if column in ("artifact", "precision", "status") else "right")
    for row in result["rows"]:
        if row["status"] != "ok":
            table.add_row(row["artifact"], row["precision"] or "?", "", "", "", "", "", "", "error")
            continue
        table.add_row(
            row["artifact"], row["precision"], f"{row['top1']:.2f}", f"{row['delta']:+.2f}", f"{row['agreement']:.2f}",
            f"{row['max_abs_diff']:.3g}", f"{row['mean_abs_diff']:.3g}", f"{row['cosine']:.6f}", "ok",
        )
    # Full width when piped (CI logs), so that numbers and paths are not cut.
    width = out.width
    if not out.is_terminal:
        out.width = 160
    try:
        out.print(table)
    finally:
        out.width = width
    for row in result["rows"]:
        if row["status"] != "ok":
            out.print(f"{row['artifact']}: error: {row['error']}", soft_wrap=True, markup=False)

