import click

from pipeline.commands import options
from pipeline.defaults import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
from pipeline.errors import EdgepipeError
from pipeline.progress import out


@click.command("export", cls=options.EdgepipeCommand)
@click.argument("checkpoint", required=False, type=click.Path(dir_okay=False), metavar="[CHECKPOINT|WEIGHTS]")
@click.option("-o", "--output", required=True, metavar="MODEL.onnx", help="ONNX file to write.")
@options.model_options(
    weights=True,
    help="The model: needed for a plain state dict or .safetensors, and to use the user code a checkpoint names (default: the checkpoint's).",
)
@click.option("--opset", default=DEFAULT_OPSET, help=f"ONNX opset ({MIN_OPSET}-{MAX_OPSET}).")
@click.option("--batch", default=1, help="Fixed batch size of the exported model.")
@click.option("--dynamic-batch", is_flag=True, help="Export with a dynamic batch dimension instead.")
@options.input_size_option(
    help="Size to export at: HxW keeps the model's channels, CxHxW also names them (default: the checkpoint's size, else the model's own)."
)
@click.option("--dynamic-size", is_flag=True, help="Also leave the input's height and width open (dynamic H/W).")
@options.data_option()
@options.force_option()
@options.json_option
def export_command(checkpoint, model, code, weights, input_size, as_json, **flags):
    """Export a checkpoint or weights file to ONNX and prove it against PyTorch (held-out images, else synthetic inputs).

    Fails (and writes nothing) unless the max abs logit difference is <= 1e-4 and top-1 agrees
    on every held-out image. A plain weights file (.pt/.pth state dict or .safetensors), given
    as --weights FILE (as train and run take it) or in place of the checkpoint, with --model and
    no --data is checked on 32 seeded synthetic inputs instead, and says so.

    \b
    Examples:
      edgepipe export runs/se/se_resnet.pt -o runs/se/model.onnx --dynamic-batch
      edgepipe export --weights w.safetensors --model net.py:make_net --input-size 3x96x96 -o model.onnx
    """
    # the export stage runs PyTorch and ONNX Runtime: imported when the command runs, so --help starts at once.
    from pipeline.export import export

    shape = input_size.chw() if input_size else None
    result = export(
        _source(checkpoint, weights), model_name=model, trust_model_code=code.trust, input_shape=shape, **flags
    )
    options.emit(result, as_json, _print)


def _print(r) -> None:
    top1 = f", top-1 {r['top1_onnx']:.2f}% (PyTorch {r['top1_pytorch']:.2f}%)" if "top1_onnx" in r else f"; {r['hint']}"
    out.print(
        f"{r['onnx']}: opset {r['opset']}, batch {r['batch']}, input {'x'.join(map(str, r['input_shape']))}; on {r['checked_on']} vs PyTorch: "
        f"max abs diff {r['max_abs_diff']:.2e}, top-1 agreement {r['top1_agreement']:.2f}%{top1}"
    )


def _source(checkpoint: str | None, weights: str | None) -> str:
    """The file to export: the positional CHECKPOINT|WEIGHTS, or --weights FILE; exactly one."""
    if checkpoint is not None and weights is not None:
        raise EdgepipeError(
            f"both {checkpoint} and --weights {weights} name the model's weights",
            fix="pass the file once, as --weights FILE or as the first argument",
        )
    if checkpoint is None and weights is None:
        raise EdgepipeError(
            "no checkpoint or weights file given",
            fix="pass a checkpoint (edgepipe export CKPT -o model.onnx) or --weights FILE",
        )
    return checkpoint if checkpoint is not None else weights
