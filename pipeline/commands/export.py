"""edgepipe export: a checkpoint (or a weights file and --model) to ONNX, proven against PyTorch."""

import click

from pipeline.commands.options import (
    EdgepipeCommand,
    data_option,
    emit,
    force_option,
    input_shape_option,
    json_option,
    model_options,
)
from pipeline.export import DEFAULT_OPSET, export
from pipeline.progress import out


@click.command("export", cls=EdgepipeCommand)
@click.argument("checkpoint", type=click.Path(dir_okay=False), metavar="CHECKPOINT|WEIGHTS")
@click.option("-o", "--output", required=True, metavar="MODEL.onnx", help="ONNX file to write.")
@model_options(
    help="The model: needed for a plain state dict or .safetensors, and to use the user code a checkpoint names (default: the checkpoint's)."
)
@click.option("--opset", default=DEFAULT_OPSET, show_default=True, help="ONNX opset (13-20).")
@click.option("--batch", default=1, show_default=True, help="Fixed batch size of the exported model.")
@click.option("--dynamic-batch", is_flag=True, help="Export with a dynamic batch dimension instead.")
@input_shape_option(
    help="Channels x height x width to export at (default: the checkpoint's size, else the model's own)."
)
@click.option("--dynamic-size", is_flag=True, help="Also leave the input's height and width open (dynamic H/W).")
@data_option
@force_option
@json_option
def export_command(
    checkpoint, output, model, code, opset, batch, dynamic_batch, input_shape, dynamic_size, data, force, as_json
):
    """Export a checkpoint or weights file to ONNX and prove it against PyTorch (held-out images, else synthetic inputs).

    Fails (and writes nothing) unless the max abs logit difference is <= 1e-4 and top-1 agrees
    on every held-out image. A plain weights file (.pt/.pth state dict or .safetensors) with
    --model and no --data is checked on 32 seeded synthetic inputs instead, and says so.

    \b
    Examples:
      edgepipe export runs/se/se_resnet.pt -o runs/se/model.onnx --dynamic-batch
      edgepipe export w.safetensors --model net.py:make_net --input-size 3x96x96 -o model.onnx
    """
    result = export(
        checkpoint,
        output,
        model_name=model,
        opset=opset,
        batch=batch,
        dynamic_batch=dynamic_batch,
        data=data,
        force=force,
        trust_model_code=code.trust,
        input_shape=input_shape,
        dynamic_size=dynamic_size,
    )
    emit(
        result,
        as_json,
        lambda r: out.print(
            f"{r['onnx']}: opset {r['opset']}, batch {r['batch']}, input {'x'.join(map(str, r['input_shape']))}; on {r['checked_on']} vs PyTorch: "
            f"max abs diff {r['max_abs_diff']:.2e}, top-1 agreement {r['top1_agreement']:.2f}%"
            + (
                f", top-1 {r['top1_onnx']:.2f}% (PyTorch {r['top1_pytorch']:.2f}%)"
                if "top1_onnx" in r
                else f"; {r['hint']}"
            ),
            markup=False,
        ),
    )
