"""``edgepipe package``: a self-sufficient bundle that builds and proves a model's engines on the device.

    BUNDLE/
      model.fp32.onnx model.fp16.onnx ...   the ONNX at each precision given
      labels.txt  preprocess.json           class names (one a line), the preprocessing
      build.sh                              the target's trtexec, strongly typed where it can be
      golden_inputs.json golden_outputs.json tolerances.json   held-out images, FP32 outputs (Polygraphy)
      deepstream/                           nvinfer configs, ONNX with mean/std folded (+ softmax), labels on one line
      triton/NAME_PRECISION/                config.pbtxt, labels.txt, 1/model.plan (written by build.sh)
      README.txt SHA256SUMS bundle.json     the commands to run, checksums, what the bundle is

It is written in a temporary folder beside ``BUNDLE`` and renamed at the end: a failure leaves
nothing, and an existing bundle is kept unless ``force``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import onnx

from pipeline import __version__
from pipeline.deploy import deepstream, fold, golden, scripts, targets, triton
from pipeline.deploy.model import DeployModel, read_model
from pipeline.errors import EdgepipeError
from pipeline.precision import Precision


@dataclass(frozen=True)
class PackageOptions:
    """What ``edgepipe package`` was asked for, parsed."""

    target: str
    data: str
    labels: str | None = None
    images: int = 8
    max_batch: int = 32
    triton_max_batch: int | None = None
    dla: bool = False
    force: bool = False


def package(onnx_paths: list[str | Path], output: str | Path, options: PackageOptions) -> dict:
    """Write the bundle for ``onnx_paths`` (one FP32 model, and FP16/INT8 ones made from it) into ``output``."""
    target = targets.get(options.target)
    output = Path(output)
    models = _read_models(onnx_paths, options.labels)
    for model in models.values():
        target.check(model.precision, options.dla)
    fp32 = models[Precision.FP32]
    profile_max = fp32.batch or options.max_batch
    if fp32.batch is None and options.triton_max_batch is not None:
        triton.check_max_batch(options.triton_max_batch, profile_max)
    if output.exists() and not options.force:
        raise EdgepipeError(f"{output} already exists", fix="pass another -o, or --force to replace it")
    feeds = golden.iterations(fp32, golden.held_out_images(fp32, options.data, options.images, options.labels))
    tmp = output.parent / f".{output.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        result = _write(tmp, target, models, feeds, options, profile_max)
        _replace(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**result, "bundle": str(output)}


def _read_models(paths: list[str | Path], labels: str | None) -> dict[Precision, DeployModel]:
    models: dict[Precision, DeployModel] = {}
    for path in paths:
        model = read_model(path, labels)
        if model.precision in models:
            raise EdgepipeError(
                f"{models[model.precision].path.name} and {Path(path).name} are both {model.precision.value}",
                fix="pass one ONNX model per precision",
            )
        models[model.precision] = model
    if Precision.FP32 not in models:
        raise EdgepipeError(
            "no FP32 model among the models given; the golden outputs are computed from it",
            fix="pass the FP32 ONNX first, e.g. edgepipe package model.onnx model.fp16.onnx --target jp6 ...",
        )
    fp32 = models[Precision.FP32]
    for model in models.values():
        if (model.input_name, model.sample_shape) != (fp32.input_name, fp32.sample_shape):
            raise EdgepipeError(
                f"{model.path.name} takes '{model.input_name}' {model.sample_shape}, {fp32.path.name} "
                f"'{fp32.input_name}' {fp32.sample_shape}: not the same model",
                fix="pass the FP16/INT8 models made from this FP32 model",
            )
    return dict(sorted(models.items(), key=lambda item: list(Precision).index(item[0])))


def _write(folder: Path, target, models: dict[Precision, DeployModel], feeds, options, profile_max) -> dict:
    fp32 = models[Precision.FP32]
    shapes = scripts.profile(fp32, profile_max)
    builds, notes = [], []
    (folder / "preprocess.json").write_text(json.dumps(fp32.preprocess.to_dict(), indent=2) + "\n")
    if fp32.class_names:
        (folder / "labels.txt").write_text("\n".join(fp32.class_names) + "\n")
        (folder / "deepstream").mkdir()
        (folder / "deepstream/labels.txt").write_text(deepstream.labels_line(fp32.class_names))
    for precision, model in models.items():
        name = f"model.{precision.value}"
        shutil.copyfile(model.path, folder / f"{name}.onnx")
        plan = f"triton/{_triton_name(fp32)}_{precision.value}/1/{triton.PLAN}"
        builds.append(scripts.Build(precision, f"{name}.onnx", f"{name}.engine", (plan,)))
        builds.append(_deepstream(folder, model, precision))
        _triton(folder / Path(plan).parent.parent, model, profile_max, options.triton_max_batch)
    if fp32.preprocess.crop:
        notes.append(
            "nvinfer does no centre crop: this model was made with one, so crop upstream or expect lower accuracy."
        )
    (folder / "build.sh").write_text(scripts.build_sh(target, builds, shapes, options.dla))
    (folder / "build.sh").chmod(0o755)
    made = golden.write(folder, fp32.path, feeds)
    scaled = golden.nvinfer_feeds(fp32, feeds)
    golden.write(folder / "deepstream", folder / "deepstream/model.fp32.onnx", scaled)
    tolerances = {p.value: golden.TOLERANCES[p] for p in models}
    (folder / "tolerances.json").write_text(json.dumps(tolerances, indent=2) + "\n")
    (folder / "README.txt").write_text(scripts.readme(target, fp32, list(models), notes))
    record = {
        "target": target.name,
        "precisions": [p.value for p in models],
        "golden": {**made, "reference": "fp32 on ONNX Runtime", "tolerances": tolerances},
        # which ONNX and precision each engine build.sh writes comes from (edgepipe validate reads it)
        "builds": {b.engine: {"onnx": b.onnx, "precision": b.precision.value} for b in builds},
        # what nvinfer's one scale would cost the unfolded model on these images (the bundle folds instead)
        "deepstream_unfolded_cost": deepstream.unfolded_cost(fp32, scaled),
        "edgepipe": __version__,
        "sha256": {name: digest for name, digest in _checksums(folder)},
    }
    (folder / "bundle.json").write_text(json.dumps(record, indent=2) + "\n")
    (folder / "SHA256SUMS").write_text("".join(f"{d}  {n}\n" for n, d in _checksums(folder)))
    return record


def _deepstream(folder: Path, model: DeployModel, precision: Precision) -> scripts.Build:
    """The DeepStream ONNX (normalization folded in, softmax for a classifier) and its nvinfer config."""
    (folder / "deepstream").mkdir(exist_ok=True)
    proto = fold.fold_normalization(onnx.load(str(model.path)), model.preprocess)
    if model.is_classifier:
        proto = fold.with_softmax(proto)
    name = f"model.{precision.value}"
    onnx.save(proto, str(folder / "deepstream" / f"{name}.onnx"))
    files = deepstream.NvinferFiles(
        f"{name}.onnx", f"{name}.engine", "labels.txt" if model.class_names else None, proto.graph.output[0].name
    )
    text = deepstream.nvinfer_config(model, precision, files, fold.scaling(model.preprocess, folded=True))
    (folder / "deepstream" / f"nvinfer_{precision.value}.txt").write_text(text)
    return scripts.Build(precision, f"deepstream/{name}.onnx", f"deepstream/{name}.engine")


def _triton(folder: Path, model: DeployModel, profile_max: int, max_batch: int | None) -> None:
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(triton.config_pbtxt(folder.name, model, profile_max, max_batch))
    labels = triton.labels_text(model)
    if labels and model.is_classifier:
        (folder / triton.LABELS).write_text(labels)


def _triton_name(model: DeployModel) -> str:
    stem = model.path.name.split(".")[0]
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in stem) or "model"


def _checksums(folder: Path) -> list[tuple[str, str]]:
    names = sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in ("SHA256SUMS", "bundle.json"))
    return [(str(p.relative_to(folder)), hashlib.sha256(p.read_bytes()).hexdigest()) for p in names]


def _replace(tmp: Path, output: Path) -> None:
    """Move the finished bundle into place; an old one is removed only once the new one is complete."""
    old = output.parent / f".{output.name}.old-{os.getpid()}"
    if output.exists():
        output.rename(old)
    tmp.rename(output)
    shutil.rmtree(old, ignore_errors=True)
