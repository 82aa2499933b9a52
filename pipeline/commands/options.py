"""The options every command shares, each parsed once into a value (a ``Precision``, never the raw text).

The one module a command imports its options from, the command class and ``emit`` included. Nothing here
imports numpy, onnx or torch: ``--help`` starts at once.
"""

import math
from collections.abc import Callable
from typing import Any

import click

from pipeline.commands.command import EdgepipeCommand, Guarded, emit
from pipeline.commands.model_options import model_options, preprocess_options, with_options
from pipeline.defaults import BUDGET_DEFAULT
from pipeline.errors import EdgepipeError
from pipeline.inputsize import FORMAT as INPUT_SIZE_FORMAT
from pipeline.inputsize import InputSize
from pipeline.precision import Precision, parse_list
from pipeline.tables import cell

# --- parsers: flag text -> value, or one EdgepipeError naming the flag ----------------------------------


def as_number(text: Any) -> float:
    """``float(text)``, or NaN for text that is no number, which every range check then refuses."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def parse_batches(text: str, option: str = "--batch") -> tuple[int, ...]:
    """ "1,8,32" -> (1, 8, 32): at least one batch size, each 1 or more."""
    try:
        values = tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise EdgepipeError(
            f"{option} {text!r} is not a list of batch sizes",
            fix=f"pass sizes of 1 or more separated by commas, e.g. {option} 1,8,32",
        )
    return values


def parse_max_drop(text: str | float | None) -> float | None:
    """ "0.5" -> 0.5 top-1 points; "none" (or no value) -> None, plain PTQ without a budget."""
    if text is None or str(text).strip().lower() == "none":
        return None
    value = as_number(text)
    if not value >= 0 or math.isinf(value):
        raise EdgepipeError(
            f"--max-drop {text!r} is not a number of points",
            fix="pass e.g. --max-drop 0.5, or --max-drop none for plain PTQ",
        )
    return value


DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str, option: str) -> float:
    """ "10m" -> 600.0 seconds ("90s", "1.5h"; a bare number is seconds)."""
    word = str(text).strip().lower()
    unit = word[-1] if word[-1:] in DURATION_UNITS else "s"
    value = as_number(word.rstrip("smh")) * DURATION_UNITS[unit]
    if not value > 0 or math.isinf(value):
        raise EdgepipeError(f"{option} {text!r} is not a duration", fix=f"pass e.g. {option} 10m, 90s or 1h")
    return value


def check_folder_flags(preprocess: Any, labels: str | None, folder_given: bool) -> None:
    """The preprocessing flags and --labels read a folder of images: without one they are an error."""
    if not folder_given and (preprocess.given or labels is not None):
        raise EdgepipeError(
            "the preprocessing flags and --labels describe a folder of images (--data or --calib), and none is given",
            fix="pass --data FOLDER (or --calib FOLDER), or drop them",
        )


def callback(parser: Callable[..., Any], *args: Any) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A Click callback: ``parser(value, *args)``, or None for a flag not given and with no default."""
    return lambda ctx, param, value: None if value is None else parser(value, *args)


def onnx_input_hw(input_size: InputSize | None, onnx_model: str) -> tuple[int, int] | None:
    """``--input-size`` for an ONNX model: (height, width), its channels (if named) checked against the model's."""
    if input_size is None:
        return None
    if input_size.channels is not None and str(onnx_model).endswith(".onnx"):
        # onnxinfo reads the graph (onnx): imported only when channels are named, never at --help.
        from pipeline.onnxinfo import describe

        input_size.check_channels(describe(onnx_model).channels, onnx_model)
    return input_size.hw


# --- shared options ----------------------------------------------------------------------------------

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout (for CI).")

DATA_HELP = (
    "Dataset: 'digits' (bundled), an ImageFolder directory, or an .npz with arrays x and y. "
    "Default: the data the model was trained on."
)


def force_option(help: str = "Overwrite an existing output file.") -> Callable:
    return click.option("--force", is_flag=True, help=help)


def data_option(default: str | None = None, help: str = DATA_HELP) -> Callable:
    return click.option("--data", default=default, metavar="digits|DIR|FILE.npz", help=help)


def batches_option(name="--batch", default="1", help="Batch sizes to measure.", dest="batches") -> Callable:
    """``--batch 1,8,32`` -> ``batches`` (or ``dest``): a tuple of batch sizes."""
    return click.option(
        name, dest, default=default, metavar="1,8,32", callback=callback(parse_batches, name), help=help
    )


def max_drop_option(default: float | None = None) -> Callable:
    """``--max-drop PTS|none`` -> ``max_drop``: the INT8 accuracy budget in top-1 points, or None.

    With a ``default`` shown, a flag not given is ``BUDGET_DEFAULT``: that budget, or none for unlabelled images.
    """

    def parse(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if default is not None and ctx.get_parameter_source(param.name) is click.core.ParameterSource.DEFAULT:
            return BUDGET_DEFAULT
        return parse_max_drop(value)

    return click.option(
        "--max-drop",
        default=None if default is None else str(default),
        metavar="PTS|none",
        callback=parse,
        help="INT8 accuracy budget: the most top-1 points INT8 may lose against FP32 on the held-out split; "
        "the most sensitive nodes stay in higher precision until it holds. 'none': plain PTQ.",
    )


def precisions_option(help: str, default: str | None = None, metavar: str | None = None) -> Callable:
    """``--precisions fp32,int8`` -> ``precisions``: a tuple of ``Precision`` (None when not given and no default)."""
    return click.option(
        "--precisions",
        default=default,
        metavar=metavar,
        callback=callback(parse_list, "--precisions"),
        help=help,
    )


def precision_flags(helps: dict[Precision, str], *, required: bool = False) -> Callable:
    """``--fp16``, ``--int8`` ... -> ``precision``: one ``Precision``, or None where none is required.

    ``helps`` gives the flags in the order ``--help`` lists them. Two flags at once, or none where
    one is required, is one error.
    """
    flags = [f"--{p.value}" for p in helps]
    one_of = f"{', '.join(flags[:-1])} and {flags[-1]}"

    def parse(kwargs: dict[str, Any]) -> None:
        chosen = [p for p in helps if kwargs.pop(p.value)]
        if len(chosen) > 1:
            given = " and ".join(f"--{p.value}" for p in chosen)
            raise EdgepipeError(
                f"choose one precision, not {given}",
                fix=f"pass exactly one of {one_of} (run the command once per precision)",
            )
        if required and not chosen:
            raise EdgepipeError("no precision given", fix=f"pass exactly one of {one_of}")
        kwargs["precision"] = chosen[0] if chosen else None

    def decorator(fn: Callable) -> Callable:
        options = [click.option(f"--{p.value}", p.value, is_flag=True, help=text) for p, text in helps.items()]
        return with_options(fn, options, parse)

    return decorator


def input_size_option(
    help: str = "Input size: HxW keeps the model's channels, CxHxW also names them (checked against the model).",
) -> Callable:
    """``--input-size [CxHxW | HxW]`` -> ``input_size``: an ``InputSize``, or None. One format in every command."""
    return click.option(
        "--input-size", "input_size", metavar=INPUT_SIZE_FORMAT, callback=callback(InputSize.parse), help=help
    )
