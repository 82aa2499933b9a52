"""The PyTorch runner: the reference every artifact is compared with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.checkpoint import load_checkpoint
from pipeline.modelspec import ModelCode
from pipeline.runner import NoGpuError, Runner


class TorchRunner(Runner):
    def __init__(self, model: torch.nn.Module, device: str = "cpu", input_shape: tuple[int, ...] | None = None):
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise NoGpuError(
                "PyTorch sees no CUDA GPU", fix="pass --device cpu, or install a CUDA build of torch on a GPU host"
            )
        self.name = f"pytorch-{torch.device(device).type}"
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.input_shape = tuple(input_shape) if input_shape else None
        self.config: dict | None = None

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, device: str = "cpu", code: ModelCode = ModelCode()) -> TorchRunner:
        """The PyTorch reference for a checkpoint, at its recorded input shape; its user code only as ``code`` allows."""
        model, config = load_checkpoint(checkpoint, model_name=code.given, trust_model_code=code.trust)
        runner = cls(model, device=device, input_shape=tuple(config["input_shape"]))
        runner.config = config
        return runner

    def infer_impl(self, batch: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            result = self.model(torch.from_numpy(batch).to(self.device))
        outputs = result if isinstance(result, (tuple, list)) else [result]
        # .cpu() waits for the GPU, so a timed call covers the whole inference.
        return [o.float().cpu().numpy() for o in outputs]
