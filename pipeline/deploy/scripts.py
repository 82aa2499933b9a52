"""The text a bundle carries for the device: ``build.sh`` (the target's own trtexec) and ``README.txt``."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.deploy import golden
from pipeline.deploy.model import DeployModel
from pipeline.deploy.targets import Target, build_flags
from pipeline.precision import Precision


@dataclass(frozen=True)
class Build:
    """One engine the device builds: from which ONNX, at which precision, where it goes."""

    precision: Precision
    onnx: str
    engine: str
    copies: tuple[str, ...] = ()  # where else the engine goes (Triton's model.plan)


def profile(model: DeployModel, max_batch: int) -> dict[str, str]:
    """trtexec's shapes: batch 1 / min(8, max) / max for a dynamic batch; none for a static one."""
    if model.batch is not None:
        return {}
    sample = "x".join(str(d) for d in model.sample_shape)
    batches = {"--minShapes": 1, "--optShapes": min(8, max_batch), "--maxShapes": max_batch}
    return {flag: f"{model.input_name}:{batch}x{sample}" for flag, batch in batches.items()}


def trtexec_command(target: Target, build: Build, shapes: dict[str, str], dla: bool = False) -> list[str]:
    """The words of one build command, the binary first; every flag is in ``target.flags``."""
    words = ['"$TRTEXEC"', f"--onnx={build.onnx}", f"--saveEngine={build.engine}"]
    words += [f"{flag}={value}" for flag, value in shapes.items()]
    return words + build_flags(target, build.precision, dla)


def build_sh(target: Target, builds: list[Build], shapes: dict[str, str], dla: bool = False) -> str:
    default = "tensorrt_rtx" if target.binary == "tensorrt_rtx" else "/usr/src/tensorrt/bin/trtexec"
    lines = [
        "#!/bin/sh",
        f"# Builds this bundle's engines with the device's own TensorRT: target {target.name} ({target.description}).",
        "# Engines are not portable across TensorRT versions or GPUs: build them on the machine that runs them.",
        "set -eu",
        'cd "$(dirname "$0")"',
        f'TRTEXEC="${{TRTEXEC:-$(command -v {target.binary} || echo {default})}}"',
    ]
    for build in builds:
        lines += ["", f"echo 'building {build.engine} ({build.precision.value})'"]
        lines.append(" ".join(trtexec_command(target, build, shapes, dla)))
        lines += [f"mkdir -p {copy.rsplit('/', 1)[0]} && cp {build.engine} {copy}" for copy in build.copies]
    return "\n".join(lines) + "\n"


def readme(target: Target, model: DeployModel, precisions: list[Precision], notes: list[str]) -> str:
    checks = [golden.check_command(f"model.{p.value}.engine", "--trt", p) for p in precisions]
    checks += [f"(cd deepstream && {golden.check_command(f'model.{p.value}.engine', '--trt', p)})" for p in precisions]
    lines = [
        f"edgepipe bundle for {model.path.name}, target {target.name} ({target.description}).",
        "Nothing of edgepipe is needed on the device: TensorRT's trtexec, and Polygraphy (pip install polygraphy).",
        "",
        "On the device, in this folder:",
        "",
        "1. Check the files arrived whole:",
        "   sha256sum -c SHA256SUMS",
        "2. Build the engines with the device's TensorRT (set TRTEXEC=/path/to/trtexec if it is elsewhere):",
        "   sh build.sh",
        "3. Prove each engine gives the golden outputs of the held-out images (exit status 0 = passed);",
        "   DeepStream's engines take x/255 (nvinfer's scaling) and give probabilities for a classifier:",
        *[f"   {command}" for command in checks],
        "",
        f"Preprocessing (preprocess.json): {model.preprocess.describe()}.",
        "DeepStream: deepstream/nvinfer_<precision>.txt (config-file-path of nvinfer); its ONNX has mean/std folded in"
        + (" and a softmax head." if model.is_classifier else "."),
        "Triton: triton/ is a model repository (build.sh writes each model.plan): tritonserver --model-repository=triton",
        *notes,
    ]
    return "\n".join(lines) + "\n"
