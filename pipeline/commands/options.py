"""What every edgepipe command shares: the command class, shared options and their parsers, output.

Flags are parsed here, once, at the edge: a command's function receives a ``Precision``, a tuple
of batch sizes or an accuracy budget, never the raw text. How a command ends is decided here too:

- a user error (``EdgepipeError``), including a flag that a parser below or a stage cannot use:
  one line ``Error: ... Fix: ...``, exit status 1;
- a command line Click cannot read (an unknown option, a missing argument, a value of the wrong
  type): one such line, exit status 2, Click's usage status;
- a result with a failed row, stage or regression: ``emit(..., failed=True)``, exit status 1;
- Ctrl-C: one line, exit status 130.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from collections.abc import Callable
from typing import Any

import click

from pipeline.errors import EdgepipeError
from pipeline.images.model_input import FLAG_KEYS, PreprocessFlags
from pipeline.modelspec import ModelCode, ModelSpec
from pipeline.modelspec import parse_input_size as parse_chw
from pipeline.precision import Precision, parse_list

FAILED = 1  # a user error, or a result with a failed row, stage or regression
INTERRUPTED = 130
# Click >= 8.2 shows a group's help through this error when it is run with no command.
_SHOWS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


# --- how a command runs and ends --------------------------------------------------------------------


def _guarded(call: Callable[[], Any]) -> Any:
    """Run ``call``; any user error, bad flag or Ctrl-C becomes one line on stderr and an exit status."""
    try:
        return call()
    except _SHOWS_HELP:
        raise
    except click.UsageError as exc:
        where = f"'{exc.ctx.command_path} --help'" if exc.ctx is not None else "--help"
        _exit_with(EdgepipeError(exc.format_message(), fix=f"see {where}"), exc.exit_code)
    except EdgepipeError as exc:
        _exit_with(exc, exc.exit_code)
    except KeyboardInterrupt:
        click.echo(
            "Error: interrupted; nothing half-written was kept. Fix: run the same command again to resume.", err=True
        )
        raise click.exceptions.Exit(INTERRUPTED) from None


def _exit_with(error: EdgepipeError, status: int) -> None:
    click.echo(f"Error: {error}", err=True)
    raise click.exceptions.Exit(status) from None


class Guarded:
    """Mixin for Click commands and groups: flags and work both end in one line, never a traceback."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        parent = super()
        return _guarded(lambda: parent.parse_args(ctx, args))

    def invoke(self, ctx: click.Context) -> Any:
        parent = super()
        quiet_libraries()
        return _guarded(lambda: parent.invoke(ctx))


class EdgepipeCommand(Guarded, click.Command):
    """Every edgepipe command: ``@click.command("name", cls=EdgepipeCommand)``."""


def quiet_libraries() -> None:
    """Keep third-party INFO chatter (ModelOpt, ONNX Runtime) off the terminal."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in ("modelopt", "onnxruntime", "polygraphy", "root"):
        logging.getLogger(name).setLevel(logging.WARNING)


def emit(
    result: dict[str, Any], as_json: bool, human: Callable[[dict[str, Any]], None], *, failed: bool = False
) -> None:
    """Print ``result`` as one JSON object on stdout, or in a human form; exit 1 when ``failed``.

    The one way a command reports that its result holds a failure (a failed row, stage or regression).
    """
    if as_json:
        click.echo(json.dumps(result, sort_keys=True, default=str))
    else:
        human(result)
    if failed:
        raise click.exceptions.Exit(FAILED)


# --- parsers: text -> value, or one EdgepipeError naming the flag ----------------------------------------------------------


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
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0 or math.isinf(value):
        raise EdgepipeError(
            f"--max-drop {text!r} is not a number of points",
            fix="pass e.g. --max-drop 0.5, or --max-drop none for plain PTQ",
        )
    return value


def parse_precisions(text: str, option: str = "--precisions") -> tuple[Precision, ...]:
    """ "fp32,int8" -> (FP32, INT8), in the order given, without repeats; at least one."""
    return parse_list(text, option)


def parse_input_size(text: str | None, option: str = "--input-size") -> tuple[int, int] | None:
    """ "224x160" (or "224") -> (224, 160): height and width for a model whose input leaves them open."""
    if text is None:
        return None
    parts = str(text).lower().split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) not in (1, 2) or min(values) < 1:
        raise EdgepipeError(
            f"{option} {text!r} is not a size", fix=f"pass height x width in pixels, e.g. {option} 224x224"
        )
    return (values[0], values[-1])


def parse_input_shape(text: str | None) -> tuple[int, int, int] | None:
    """ "3x96x96" -> (3, 96, 96): channels, height and width a PyTorch model is trained and exported at."""
    return None if text is None else parse_chw(text)


def _callback(parser: Callable[..., Any], *args: Any) -> Callable[[click.Context, click.Parameter, Any], Any]:
    return lambda ctx, param, value: parser(value, *args)


# --- shared options ----------------------------------------------------------------------------------

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout (for CI).")

DATA_HELP = (
    "Dataset: 'digits' (bundled), an ImageFolder directory, or an .npz with arrays x and y. "
    "Default: the data the model was trained on."
)


def force_option(fn: Callable | None = None, *, help: str = "Overwrite an existing output file.") -> Callable:
    """``--force``; ``@force_option`` or, with another meaning, ``@force_option(help=...)``."""
    decorator = click.option("--force", is_flag=True, help=help)
    return decorator(fn) if fn is not None else decorator


def data_option(fn: Callable | None = None, *, default: str | None = None, help: str = DATA_HELP) -> Callable:
    """``--data digits|DIR|FILE.npz``; ``@data_option`` or ``@data_option(default=..., help=...)``."""
    decorator = click.option(
        "--data", default=default, show_default=default is not None, metavar="digits|DIR|FILE.npz", help=help
    )
    return decorator(fn) if fn is not None else decorator


def batches_option(name: str = "--batch", default: str = "1", help: str = "Batch sizes to measure.") -> Callable:
    """``--batch 1,8,32`` -> ``batches``: a tuple of batch sizes."""
    return click.option(
        name,
        "batches",
        default=default,
        show_default=True,
        metavar="1,8,32",
        callback=_callback(parse_batches, name),
        help=help,
    )


def max_drop_option(default: float | None = None) -> Callable:
    """``--max-drop PTS|none`` -> ``max_drop``: the INT8 accuracy budget in top-1 points, or None."""
    return click.option(
        "--max-drop",
        "max_drop",
        default=None if default is None else str(default),
        show_default=default is not None,
        metavar="PTS|none",
        callback=_callback(parse_max_drop),
        help="INT8 accuracy budget: the most top-1 points INT8 may lose against FP32 on the held-out split; "
        "the most sensitive nodes stay in higher precision until it holds. 'none': plain PTQ.",
    )


def precisions_option(default: str = "fp32,fp16,int8", help: str = "Comma-separated precisions.") -> Callable:
    """``--precisions fp32,int8`` -> ``precisions``: a tuple of ``Precision``."""
    return click.option(
        "--precisions",
        "precisions",
        default=default,
        show_default=True,
        callback=_callback(parse_precisions),
        help=help,
    )


def precision_flags(helps: dict[Precision, str], *, required: bool = False) -> Callable:
    """``--fp16``, ``--int8`` ... -> ``precision``: one ``Precision``, or None where none is required.

    ``helps`` gives the flags in the order ``--help`` lists them. Two flags at once, or none where
    one is required, is one error.
    """
    flags = [f"--{p.value}" for p in helps]
    one_of = f"{', '.join(flags[:-1])} and {flags[-1]}"

    def decorator(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            chosen = [p for p in helps if kwargs.pop(p.value)]
            if len(chosen) > 1:
                given = " and ".join(f"--{p.value}" for p in chosen)
                raise EdgepipeError(
                    f"choose one precision, not {given}",
                    fix=f"pass exactly one of {one_of} (run the command once per precision)",
                )
            if required and not chosen:
                raise EdgepipeError("no precision given", fix=f"pass exactly one of {one_of}")
            return fn(*args, precision=chosen[0] if chosen else None, **kwargs)

        for precision, text in reversed(helps.items()):  # Click lists options in the order written
            command = click.option(f"--{precision.value}", precision.value, is_flag=True, help=text)(command)
        return command

    return decorator


def input_size_option(help: str = "Height x width for models whose input leaves them open (dynamic H/W).") -> Callable:
    """``--input-size HxW`` -> ``input_size``: (height, width), or None."""
    return click.option(
        "--input-size", "input_size", default=None, metavar="HxW", callback=_callback(parse_input_size), help=help
    )


def input_shape_option(
    help: str = "Channels x height x width of the model's input (default: the model's own size, else 32x32 in the data's channels).",
) -> Callable:
    """``--input-size CxHxW`` -> ``input_shape``: (C, H, W) of a PyTorch model's input, or None."""
    return click.option(
        "--input-size", "input_shape", default=None, metavar="CxHxW", callback=_callback(parse_input_shape), help=help
    )


MODEL_HELP = (
    "Zoo model ('edgepipe models'), a timm model (timm installed), or your own: a callable returning an nn.Module."
)


def model_options(
    default: str | None = None, *, weights: bool = False, trust: bool = True, help: str = MODEL_HELP
) -> Callable:
    """``--model SPEC --model-arg K=V ... [--weights FILE] [--trust-model-code]`` -> ``model`` and ``code``.

    ``model`` is the parsed ``ModelSpec`` (or None when not given and no default); ``code`` is the
    ``ModelCode`` a stage needs to rebuild a checkpoint's model: the user code it may import. With
    ``weights``, ``--weights FILE`` -> ``weights``.
    """

    def decorator(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            text, pairs = kwargs.pop("model_name"), kwargs.pop("model_args")
            if text is None and pairs:
                raise EdgepipeError(
                    "--model-arg was given without --model", fix="pass --model SPEC with its --model-arg values"
                )
            given = ModelSpec.parse(text, pairs) if text is not None else None
            trusted = kwargs.pop("trust_model_code", False)
            kwargs["model"] = given
            kwargs["code"] = ModelCode(given, trusted)
            return fn(*args, **kwargs)

        options = [
            click.option(
                "--model",
                "model_name",
                default=default,
                show_default=default is not None,
                metavar="NAME|timm:NAME|module:callable|file.py:callable",
                help=help,
            ),
            click.option(
                "--model-arg",
                "model_args",
                multiple=True,
                metavar="KEY=VALUE",
                help="Keyword argument for the model's callable (repeatable).",
            ),
        ]
        if weights:
            options.append(
                click.option(
                    "--weights",
                    default=None,
                    type=click.Path(dir_okay=False),
                    metavar="FILE",
                    help="Weights to start from (.pt/.pth state dict, or .safetensors; never pickled objects).",
                )
            )
        if trust:
            options.append(
                click.option(
                    "--trust-model-code",
                    "trust_model_code",
                    is_flag=True,
                    help="Import the user code a checkpoint names without --model (only for checkpoints you trust).",
                )
            )
        for option in reversed(options):  # Click lists options in the order written
            command = option(command)
        return command

    return decorator


_PREPROCESS_HELP = {
    "resize": (
        "N|HxW",
        "Resize: N sets the shorter side (torchvision's Resize(N)), HxW the exact size. Default: the model's input size.",
    ),
    "crop": ("N|HxW", "Centre crop after the resize (torchvision's CenterCrop)."),
    "mean": ("a,b,c", "Mean subtracted per channel, in [0, 1] units as timm gives it."),
    "std": ("a,b,c", "Standard deviation divided per channel, in [0, 1] units."),
    "channel_order": ("rgb|bgr", "Channel order the model takes (mean/std are in that order). Default: rgb."),
    "interpolation": ("NAME", "Resize filter: nearest, bilinear, bicubic, lanczos, box, hamming. Default: bilinear."),
    "layout": ("nchw|nhwc", "The model input's layout. Default: read from the model."),
}


def preprocess_options(fn: Callable) -> Callable:
    """The user's data, as models edgepipe did not export need it, parsed once into values.

    ``--resize --crop --mean --std --channel-order --interpolation --layout --preprocess FILE``
    -> ``preprocess``: a ``PreprocessFlags`` (each value checked here; the model's stored
    preprocessing, the file and the flags are combined into its ``Preprocess`` when the model is
    read); ``--labels FILE`` -> ``labels``; ``--workers N`` -> ``workers``.
    """

    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> Any:
        flags = {key: kwargs.pop(key) for key in FLAG_KEYS}
        kwargs["preprocess"] = PreprocessFlags.parse(file=kwargs.pop("preprocess_file"), **flags)
        return fn(*args, **kwargs)

    options = [
        click.option(f"--{key.replace('_', '-')}", key, default=None, metavar=metavar, help=text)
        for key, (metavar, text) in _PREPROCESS_HELP.items()
    ]
    options += [
        click.option(
            "--preprocess",
            "preprocess_file",
            default=None,
            type=click.Path(dir_okay=False),
            metavar="FILE",
            help="The same keys in a YAML or JSON file (resize, crop, mean, std, channel_order, interpolation, layout); flags override it.",
        ),
        click.option(
            "--labels",
            "labels",
            default=None,
            type=click.Path(dir_okay=False),
            metavar="FILE",
            help="Class names, one per line, in the model's output order; ImageFolder sub-folders are mapped through it.",
        ),
        click.option(
            "--workers",
            "workers",
            default=None,
            type=click.IntRange(min=0),
            metavar="N",
            help="Processes decoding images in parallel (0: in the main process). Default: min(4, CPUs); "
            "validate on 2 CPUs or fewer decodes in the main process, beside the models.",
        ),
    ]
    for option in reversed(options):  # Click lists options in the order written
        command = option(command)
    return command
