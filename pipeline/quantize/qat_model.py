"""The PyTorch side of quantization-aware training: ModelOpt's fake-quant model, fine-tuned, exported with Q/DQ.

* ``calibrate``: ``modelopt.torch.quantization.quantize`` with ``INT8_DEFAULT_CFG`` (per-channel
  weights, per-tensor activations, max calibration) on the calibration images: every Conv and
  Linear reads quantized inputs and weights; attention gates, softmax and the attention products
  (functional ops, no quantizer) stay in float.
* ``fine_tune``: a few epochs of distillation from the FP32 model on the same images: KL divergence
  between the student's and the teacher's class scores (mean squared error for outputs that are not
  N x C scores), plus a little cross-entropy (``LABEL_WEIGHT``) where the images are labelled.
  Batch-norm statistics and the calibrated ranges stay as they are (the model runs in eval mode):
  only the weights learn.
* ``export_qdq``: the TorchScript ONNX exporter turns each quantizer into a QuantizeLinear /
  DequantizeLinear pair with constant, symmetric scales; identity Casts it puts before some of them
  are dropped.
"""

from __future__ import annotations

import copy
import io
import warnings
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from pipeline.defaults import MAX_OPSET, MIN_OPSET
from pipeline.errors import EdgepipeError
from pipeline.onnxinfo import ModelInfo
from pipeline.progress import progress_bar
from pipeline.quantize.modelopt_log import quiet_modelopt

LEARNING_RATE = 1e-5  # Adam, cosine-annealed to zero: QAT nudges weights that already work
# The labels' cross-entropy beside the distillation term: labels sharpen scores away from FP32's, so they weigh little.
LABEL_WEIGHT = 0.1
BATCH_SIZE = 32
SEED = 0
FIX = "check that the PyTorch model exports with 'edgepipe export'; or drop --qat for post-training quantization"


def calibrate(teacher: torch.nn.Module, images: np.ndarray) -> torch.nn.Module:
    """A fake-quantized copy of ``teacher``: ModelOpt's INT8 config, ranges calibrated on ``images``."""
    try:
        import modelopt.torch.quantization as mtq  # seconds to import: only --qat pays
    except ImportError as exc:
        raise EdgepipeError(
            f"ModelOpt's PyTorch quantization does not import ({exc})",
            fix="install huggingface_hub, which modelopt.torch imports (pip install huggingface_hub)",
        ) from None
    student = copy.deepcopy(teacher).eval()

    def forward_loop(model: torch.nn.Module) -> None:
        with torch.no_grad():
            for start in range(0, len(images), BATCH_SIZE):
                model(torch.from_numpy(np.ascontiguousarray(images[start : start + BATCH_SIZE])))

    with quiet_modelopt(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return mtq.quantize(student, mtq.INT8_DEFAULT_CFG, forward_loop)
        except Exception as exc:  # ModelOpt raises many types on models it cannot convert
            raise EdgepipeError(f"ModelOpt could not quantize the PyTorch model: {_first_line(exc)}", fix=FIX) from None


def fine_tune(
    student: torch.nn.Module, teacher: torch.nn.Module, images: np.ndarray, labels: np.ndarray | None, epochs: int
) -> list[float]:
    """Distil ``teacher`` into ``student`` for ``epochs`` passes over ``images``; the mean loss of each epoch."""
    torch.manual_seed(SEED)
    x = torch.from_numpy(np.ascontiguousarray(images))
    y = None if labels is None else torch.from_numpy(np.asarray(labels, dtype=np.int64))
    steps = epochs * -(-len(x) // BATCH_SIZE)
    optimizer = torch.optim.Adam(student.parameters(), lr=LEARNING_RATE)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    generator = torch.Generator().manual_seed(SEED)
    teacher.eval()
    student.eval()  # batch-norm statistics stay those of the FP32 model
    losses = []
    with progress_bar("quantization-aware training", epochs) as bar:
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=generator)
            total = 0.0
            for start in range(0, len(x), BATCH_SIZE):
                batch = order[start : start + BATCH_SIZE]
                with torch.no_grad():
                    targets = _outputs(teacher(x[batch]))
                loss = distillation_loss(_outputs(student(x[batch])), targets, None if y is None else y[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.item() * len(batch)
            losses.append(round(total / len(x), 6))
            bar.advance()
    return losses


def distillation_loss(outputs: list[torch.Tensor], targets: list[torch.Tensor], labels: torch.Tensor | None):
    """KL(teacher || student) over the classes of N x C outputs, MSE for others; + weighted cross-entropy with labels."""
    loss = torch.zeros(())
    for output, target in zip(outputs, targets):
        if output.ndim == 2:
            loss = loss + F.kl_div(
                F.log_softmax(output, -1), F.log_softmax(target, -1), reduction="batchmean", log_target=True
            )
        else:
            loss = loss + F.mse_loss(output, target)
    if labels is not None and outputs[0].ndim == 2:
        loss = loss + LABEL_WEIGHT * F.cross_entropy(outputs[0], labels)
    return loss


def export_qdq(student: torch.nn.Module, info: ModelInfo, sample_shape: tuple[int, ...]) -> onnx.ModelProto:
    """The fake-quant model as a Q/DQ ONNX with ``info``'s input and output names, batch and dynamic axes."""
    student.eval()
    example = torch.zeros(info.batch or 1, *sample_shape)
    axes = {
        **({0: "batch"} if info.batch is None else {}),
        **(dict(zip(info.hw_axes, ("height", "width"))) if info.dynamic_hw else {}),
    }
    outputs = {name: {0: "batch"} for name in info.output_names} if info.batch is None else {}
    buffer = io.BytesIO()
    with quiet_modelopt(), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                student,
                (example,),
                buffer,
                opset_version=min(max(info.opset, MIN_OPSET), MAX_OPSET),  # Q/DQ needs 13; the exporter goes up to 20
                dynamo=False,
                do_constant_folding=True,
                input_names=[info.input_name],
                output_names=info.output_names,
                dynamic_axes={info.input_name: axes, **outputs} if axes else None,
            )
        except Exception as exc:  # the exporter raises many types for ops it cannot translate
            raise EdgepipeError(f"the fake-quant model does not export to ONNX: {_first_line(exc)}", fix=FIX) from None
    model = onnx.load_from_string(buffer.getvalue())
    _drop_identity_casts(model)
    return model


def _drop_identity_casts(model: onnx.ModelProto) -> None:
    """Remove Cast-to-float nodes whose input is already float (the exporter puts some before QuantizeLinear)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.input]}
    outputs = {o.name for o in model.graph.output}
    for node in [n for n in model.graph.node if n.op_type == "Cast"]:
        target = next(a.i for a in node.attribute if a.name == "to")
        if types.get(node.input[0]) != target or node.output[0] in outputs:
            continue
        for consumer in model.graph.node:
            consumer.input[:] = [node.input[0] if name == node.output[0] else name for name in consumer.input]
        model.graph.node.remove(node)


def _outputs(result: Any) -> list[torch.Tensor]:
    """A forward pass's tensors: one, or those of a tuple/list/dict, in order."""
    if isinstance(result, torch.Tensor):
        return [result]
    values = result.values() if isinstance(result, dict) else result
    return [value for value in values if isinstance(value, torch.Tensor)]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
