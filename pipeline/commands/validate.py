from pathlib import Path

import click
from rich.table import Table

from pipeline.commands import options
from pipeline.defaults import DEFAULT_ATOL, DEFAULT_BATCH_SIZE, DEFAULT_RTOL, SPLITS
from pipeline.errors import EdgepipeError
from pipeline.progress import out


@click.command("validate", cls=options.EdgepipeCommand)
@click.option(
    "--reference",
    "--checkpoint",
    metavar="CKPT|MODEL.onnx|WEIGHTS",
    help="The FP32 model every artifact is compared with: the PyTorch checkpoint, an FP32 .onnx on ONNX Runtime "
    "(any single-image-input ONNX), or your model's weights file with --model. Default: the first FP32 .onnx among the artifacts.",
)
@click.argument("artifacts", nargs=-1, required=True, metavar="[BUNDLE] ARTIFACT...")
@options.data_option(
    help="Images to validate on: an ImageFolder, a folder of images, an .npz with pixels x or model inputs (and y), or 'digits'. "
    "Default: the data an edgepipe model records; a model edgepipe did not export needs it."
)
@options.preprocess_options
@click.option(
    "--split",
    type=click.Choice(SPLITS),
    default="auto",
    help="Which of --data's images count: the held-out part of a seeded split, all, or auto (held-out when an artifact was calibrated on the rest).",
)
@click.option(
    "--atol", default=DEFAULT_ATOL, help="Absolute tolerance of the pass/fail check, per output element (Polygraphy's)."
)
@click.option("--rtol", default=DEFAULT_RTOL, help="Relative tolerance of the pass/fail check.")
@click.option(
    "--batch-size",
    default=DEFAULT_BATCH_SIZE,
    type=click.IntRange(min=1),
    help="Images per batch when --data is streamed through the models (memory for a big model's activations grows with it).",
)
@options.model_options(
    help="The model of a checkpoint reference that names your own code: --model again, or --trust-model-code."
)
@options.json_option
def validate_command(reference, artifacts, data, model, as_json, **settings):
    """Compare artifacts (ONNX at any precision, engines) with PyTorch on the held-out split.

    One row per artifact: precision, top-1 and its change in points (labelled images), argmax
    agreement, max and mean abs output difference, cosine similarity. An artifact that cannot be
    run is a row with status "error"; the exit code is then 1. The reference may also be an FP32
    ONNX, run on ONNX Runtime. For a model edgepipe did not export it is the FP32 ONNX, and the
    images are --data, streamed once through the reference and every artifact with the model's
    preprocessing (stored in it, or given here).

    On the device, the first ARTIFACT may be a bundle (edgepipe package) or its golden_outputs.json:
    each model after it (the engine built there, or an ONNX of the bundle) is checked against the
    bundle's golden outputs under its precision's tolerance, with no torch, no ONNX Runtime and no
    data; a model the golden outputs were not made for is refused.

    \b
    Examples:
      edgepipe validate --reference runs/se/se_resnet.pt runs/se/model.onnx runs/se/model.fp16.onnx runs/se/model.int8.onnx
      edgepipe validate --reference resnet.onnx resnet.int8.onnx --data photos/ --labels labels.txt \\
          --resize 256 --crop 224 --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225
      edgepipe validate bundle/ model.fp16.onnx
    """
    # a bundle folder, or its golden_outputs.json: what validate checks models against on the device
    if reference is None and (Path(artifacts[0]).is_dir() or Path(artifacts[0]).suffix == ".json"):
        _validate_golden(artifacts, data, as_json)
        return
    # validating runs the models (numpy, onnx, ONNX Runtime, torch): imported when the command runs, so --help starts at once.
    from pipeline.validate import validate

    # ``model`` is the --model spec; what validate needs of it, the code it may import, is in ``code``.
    result = validate(reference, artifacts, data=data, **settings)
    options.emit(result, as_json, _print_table, failed=not result["ok"])


def _validate_golden(artifacts, data, as_json) -> None:
    if len(artifacts) < 2 or data is not None:
        raise EdgepipeError(
            f"{artifacts[0]} holds golden outputs: they are checked with the bundle's own images, against models",
            fix=f"pass the models after it, and no --data: edgepipe validate {artifacts[0]} model.fp16.engine",
        )
    # runs the engine (TensorRT, the CUDA binding) or the ONNX: imported when the command runs, so --help starts at once.
    from pipeline.validate_golden import validate_golden

    result = validate_golden(artifacts[0], list(artifacts[1:]))
    options.emit(result, as_json, _print_golden, failed=not result["ok"])


def _print_golden(result) -> None:
    out.print(f"golden outputs {result['golden']}: {result['images']} images")
    for row in result["rows"]:
        worst = max(row["outputs"].values(), key=lambda figures: figures["max_abs_diff"])
        failed = sum(figures["failed_elements"] for figures in row["outputs"].values())
        verdict = "passed" if row["passed"] else f"FAILED ({failed} values out of tolerance)"
        out.print(
            f"{row['model']} ({row['precision']}, made from {row['made_from']}, on {row['runner']}): {verdict}; "
            f"max |Δ| {worst['max_abs_diff']:.3g} (atol {row['atol']:g}, rtol {row['rtol']:g})",
            soft_wrap=True,
        )


def _title(result) -> str:
    ref = result["reference"]
    if "images" not in result:  # an edgepipe model, on its recorded held-out split
        return f"{result['model']} on {ref['samples']} held-out images; PyTorch top-1 {ref['top1']:.2f}%"
    accuracy = f"FP32 top-1 {ref['top1']:.2f}%" if ref.get("top1") is not None else "unlabelled: agreement with FP32"
    return f"{result['model']} on {result['images']['text']}; {accuracy}"


# The figures of the table: column -> (key of the row, format).
FIGURES = {
    "top-1 %": ("top1", ".2f"),
    "Δ pts": ("delta", "+.2f"),
    "agreement %": ("agreement", ".2f"),
    "max |Δ|": ("max_abs_diff", ".3g"),
    "mean |Δ|": ("mean_abs_diff", ".3g"),
    "cosine": ("cosine", ".6f"),
}


def _print_table(result):
    table = Table(title=_title(result))
    for column in ("artifact", "precision", *FIGURES, "status"):
        table.add_column(column, justify="right" if column in FIGURES else "left")
    for row in result["rows"]:
        ok = row["status"] == "ok"
        figures = [options.cell(row.get(key), spec) if ok else "" for key, spec in FIGURES.values()]
        table.add_row(row["artifact"], row["precision"] or "?", *figures, row["status"].split(":")[0])
    # Full width when piped (CI logs), so that numbers and paths are not cut.
    width = out.width
    if not out.is_terminal:
        out.width = 160
    try:
        out.print(table)
    finally:
        out.width = width
    for row in result["rows"]:
        outputs = (row.get("outputs") or {}) if row["status"] == "ok" else {}
        for name, figures in outputs.items() if len(outputs) > 1 else ():
            agreement = figures.get("argmax_agreement")
            agreement = "" if agreement is None else f", argmax agreement {agreement:.2f}%"
            out.print(
                f"{row['artifact']} output '{name}': max |Δ| {figures['max_abs_diff']:.3g}, cosine {figures['cosine']:.6f}{agreement}",
                soft_wrap=True,
            )
        if row["status"] != "ok":
            out.print(f"{row['artifact']}: {row['status'].split(':')[0]}: {row['error']}", soft_wrap=True)
    for note in result.get("notes") or []:
        out.print(f"Note: {note}", soft_wrap=True)
