"""The flags that say which model and how it reads the user's images, parsed when the command runs."""

import functools
from collections.abc import Callable
from typing import Any

import click

from pipeline.errors import EdgepipeError

MODEL_HELP = (
    "Zoo model ('edgepipe models'), a timm model (timm installed), or your own: a callable returning an nn.Module."
)
WEIGHTS_HELP = "Weights to start from (.pt/.pth state dict, or .safetensors; never pickled objects)."


def with_options(fn: Callable, options: list[Callable], parse: Callable[[dict[str, Any]], None]) -> Callable:
    """``fn`` with Click ``options`` (listed by ``--help`` in this order), their values turned by ``parse``
    (which edits the keyword arguments in place) before ``fn`` is called."""

    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> Any:
        parse(kwargs)
        return fn(*args, **kwargs)

    for option in reversed(options):  # Click lists options in the order written
        command = option(command)
    return command


def _parse_model(kwargs: dict[str, Any]) -> None:
    """Replace ``model_name``/``model_args``/``trust_model_code`` in ``kwargs`` by ``model`` and ``code``."""
    # modelspec reads ONNX metadata and hashes files (onnx, numpy): imported when the command runs, not at --help.
    from pipeline.modelspec import ModelCode, ModelSpec

    text, pairs = kwargs.pop("model_name"), kwargs.pop("model_args")
    if text is None and pairs:
        raise EdgepipeError(
            "--model-arg was given without --model", fix="pass --model SPEC with its --model-arg values"
        )
    given = ModelSpec.parse(text, pairs) if text is not None else None
    kwargs["model"] = given
    kwargs["code"] = ModelCode(given, kwargs.pop("trust_model_code", False))


def model_options(
    default: str | None = None, *, weights: bool = False, trust: bool = True, help: str = MODEL_HELP
) -> Callable:
    """``--model SPEC --model-arg K=V ... [--weights FILE] [--trust-model-code]`` -> ``model`` and ``code``.

    ``model`` is the parsed ``ModelSpec`` (or None when not given and no default); ``code`` is the
    ``ModelCode`` a stage needs to rebuild a checkpoint's model: the user code it may import. With
    ``weights``, ``--weights FILE`` -> ``weights``.
    """

    def decorator(fn: Callable) -> Callable:
        options = [
            click.option(
                "--model",
                "model_name",
                default=default,
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
                click.option("--weights", type=click.Path(dir_okay=False), metavar="FILE", help=WEIGHTS_HELP)
            )
        if trust:
            options.append(
                click.option(
                    "--trust-model-code",
                    is_flag=True,
                    help="Import the user code a checkpoint names without --model (only for checkpoints you trust).",
                )
            )
        return with_options(fn, options, _parse_model)

    return decorator


# The preprocessing flags (pipeline.images.model_input.FLAG_KEYS, in that order): metavar and help.
PREPROCESS_HELP = {
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


def _parse_preprocess(kwargs: dict[str, Any]) -> None:
    """Replace the preprocessing flags in ``kwargs`` by ``preprocess``: one ``PreprocessFlags``."""
    # images.model_input reads ONNX models (onnx, numpy): imported when the command runs, not at --help.
    from pipeline.images.model_input import PreprocessFlags

    flags = {key: kwargs.pop(key) for key in PREPROCESS_HELP}
    kwargs["preprocess"] = PreprocessFlags.parse(file=kwargs.pop("preprocess_file"), **flags)


def preprocess_options(fn: Callable) -> Callable:
    """The user's data, as models edgepipe did not export need it, parsed once into values.

    ``--resize --crop --mean --std --channel-order --interpolation --layout --preprocess FILE``
    -> ``preprocess``: a ``PreprocessFlags`` (each value checked here; the model's stored
    preprocessing, the file and the flags are combined into its ``Preprocess`` when the model is
    read); ``--labels FILE`` -> ``labels``; ``--workers N`` -> ``workers``.
    """
    options = [
        click.option(f"--{key.replace('_', '-')}", key, metavar=metavar, help=text)
        for key, (metavar, text) in PREPROCESS_HELP.items()
    ]
    options += [
        click.option(
            "--preprocess",
            "preprocess_file",
            type=click.Path(dir_okay=False),
            metavar="FILE",
            help="The same keys in a YAML or JSON file (resize, crop, mean, std, channel_order, interpolation, layout); flags override it.",
        ),
        click.option(
            "--labels",
            type=click.Path(dir_okay=False),
            metavar="FILE",
            help="Class names, one per line, in the model's output order; ImageFolder sub-folders are mapped through it.",
        ),
        click.option(
            "--workers",
            type=click.IntRange(min=0),
            metavar="N",
            help="Processes decoding images in parallel (0: in the main process). Default: min(4, CPUs); "
            "validate on 2 CPUs or fewer decodes in the main process, beside the models.",
        ),
    ]
    return with_options(fn, options, _parse_preprocess)
