"""The devices a bundle is built on: their TensorRT, the trtexec flags it has, DLA, and what it builds.

Plans are not portable across TensorRT versions, so ``build.sh`` runs the device's own trtexec
(``tensorrt_rtx`` for TensorRT-RTX), and every flag it passes must exist in that version.
``FLAGS`` is that list per version, from NVIDIA's trtexec documentation and migration guides:

- TensorRT 8.5 (JetPack 5.1): trtexec of 8.5 (``--workspace`` deprecated for ``--memPoolSize``
  since 8.4); no ``--stronglyTyped`` (added with strongly typed networks in 9.x / 10.0), no
  ``--builderOptimizationLevel``, ``--versionCompatible``, ``--hardwareCompatibilityLevel`` (8.6).
- TensorRT 8.6 (JetPack 6.0 DP): 8.5's flags plus those three; still no ``--stronglyTyped``.
- TensorRT 10.x (JetPack 6.1+/7, data-centre): "Migrating trtexec Usage from TensorRT 8.x to 10.x"
  removes ``--workspace``, ``--minTiming``, ``--batch``, ``--maxBatch``, the Caffe/UFF flags;
  ``--stronglyTyped`` exists (opt-in; weak typing deprecated in 10.12).
- TensorRT 11.x: "Migrating trtexec Usage from TensorRT 10.x to 11.x" removes ``--fp16``,
  ``--int8``, ``--bf16``, ``--fp8``, ``--int4``, ``--best`` and ``--calib``: every network is strongly
  typed, so ``--stronglyTyped`` is not needed and not passed.
- TensorRT-RTX (``tensorrt_rtx`` CLI, "Deploy Your First Model", TensorRT-RTX 1.x docs): ``--onnx``,
  ``--saveEngine``, the shape flags and the timing cache; strongly typed only, no precision flags.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import EdgepipeError
from pipeline.precision import Precision

_COMMON = frozenset(
    {"--onnx", "--saveEngine", "--minShapes", "--optShapes", "--maxShapes", "--memPoolSize", "--timingCacheFile"}
    | {"--verbose", "--noTF32"}
)
_DLA = frozenset({"--useDLACore", "--allowGPUFallback"})
_WEAK = frozenset({"--fp16", "--int8", "--calib", "--best"})  # builder precision flags (removed in 11)
_COMPAT = frozenset(
    {"--builderOptimizationLevel", "--versionCompatible", "--hardwareCompatibilityLevel", "--skipInference"}
)  # added in 8.6 (8.5 has --buildOnly where 8.6 has --skipInference)

FLAGS: dict[str, frozenset[str]] = {
    "8.5": _COMMON | _DLA | _WEAK | {"--workspace", "--buildOnly"},
    "8.6": _COMMON | _DLA | _WEAK | _COMPAT | {"--workspace"},
    "10": _COMMON | _DLA | _WEAK | _COMPAT | {"--stronglyTyped"},
    "11": _COMMON | _DLA | _COMPAT,
    "rtx": frozenset({"--onnx", "--saveEngine", "--minShapes", "--optShapes", "--maxShapes", "--timingCacheFile"}),
}

_ALL = (Precision.FP32, Precision.FP16, Precision.INT8)
_INT8_ON_85 = (
    "TensorRT 8.5 cannot build edgepipe's INT8 ONNX: its Q/DQ graph is strongly typed (FP16 scales and casts, which "
    "8.5's parser refuses), and 8.5's only other INT8 path is the implicit calibrator, which needs a calibration "
    "cache made on the device"
)


@dataclass(frozen=True)
class Target:
    """One device target: the tool and the TensorRT version of its trtexec, and what it can build."""

    name: str
    description: str
    tensorrt: str  # a key of FLAGS
    binary: str  # "trtexec" or "tensorrt_rtx"
    python: str
    cuda: str
    dla: bool  # the target's GPU has DLA cores (Orin yes, Thor no)
    precisions: tuple[Precision, ...]
    why_not: dict[Precision, str]  # why a precision is not built here
    strongly_typed: bool  # build.sh builds strongly typed networks (precision from the ONNX)

    @property
    def flags(self) -> frozenset[str]:
        return FLAGS[self.tensorrt]

    def check(self, precision: Precision, dla: bool = False) -> None:
        """Raise when this target cannot build ``precision`` (on DLA when ``dla``)."""
        if precision not in self.precisions:
            raise EdgepipeError(
                f"target {self.name} ({self.description}) cannot build {precision.value}: {self.why_not[precision]}",
                fix=f"package {', '.join(p.value for p in self.precisions)} for {self.name}, or pick a target "
                "with TensorRT >= 10 (jp6, jp7, trt10, trt11)",
            )
        if dla and not self.dla:
            raise EdgepipeError(
                f"target {self.name} ({self.description}) has no DLA",
                fix="drop --dla (Jetson Thor has no DLA cores; Jetson Orin has two: targets jp5, jp6)",
            )
        if dla and precision != Precision.FP16:
            raise EdgepipeError(
                f"DLA builds FP16 from an ONNX model here, not {precision.value} (DLA INT8 needs a calibration cache)",
                fix="pass the FP16 model with --dla, or drop --dla",
            )


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            "jp5", "JetPack 5.1, TensorRT 8.5", "8.5", "trtexec", "3.8", "11.4", True,
            (Precision.FP32, Precision.FP16), {Precision.INT8: _INT8_ON_85}, False,
        ),
        Target("jp6", "JetPack 6.1/6.2, TensorRT 10.3", "10", "trtexec", "3.10", "12.6", True, _ALL, {}, True),
        Target("jp7", "JetPack 7 on Jetson Thor, TensorRT 10.13+", "10", "trtexec", "3.12", "13", False, _ALL, {}, True),
        Target("trt10", "TensorRT 10.x on a data-centre or desktop GPU", "10", "trtexec", "3.10+", "12", False, _ALL, {}, True),
        Target("trt11", "TensorRT 11.x, always strongly typed", "11", "trtexec", "3.10+", "13", False, _ALL, {}, True),
        Target("rtx", "TensorRT-RTX on an RTX GPU", "rtx", "tensorrt_rtx", "3.10+", "12/13", False, _ALL, {}, True),
    )
}  # fmt: skip


def get(name: str) -> Target:
    """The target called ``name``; one error naming the known ones otherwise."""
    if name not in TARGETS:
        raise EdgepipeError(
            f"unknown target {name!r}",
            fix=f"pass --target with one of {', '.join(TARGETS)} (jp5 = JetPack 5.1, jp6 = JetPack 6, jp7 = JetPack 7)",
        )
    return TARGETS[name]


def build_flags(target: Target, precision: Precision, dla: bool = False) -> list[str]:
    """The precision and device flags of one build, beyond --onnx, --saveEngine and the shapes."""
    target.check(precision, dla)
    if dla:
        return ["--fp16", "--useDLACore=0", "--allowGPUFallback"]
    if target.strongly_typed:
        return ["--stronglyTyped"] if "--stronglyTyped" in target.flags else []
    # TensorRT 8.5: weakly typed; an FP16 ONNX still needs the builder flag to run FP16 kernels.
    return ["--fp16"] if precision == Precision.FP16 else []


def flag_names(command: list[str]) -> list[str]:
    """The flag names (``--saveEngine``) of a command's words (``--saveEngine=model.engine``)."""
    return [word.split("=", 1)[0] for word in command if word.startswith("--")]
