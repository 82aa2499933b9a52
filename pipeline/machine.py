"""What reports, manifests and benchmarks say about where they ran: host, tools, device, peak memory."""

from __future__ import annotations

import os
import platform
import threading
from importlib import metadata
from pathlib import Path
from typing import Any

_TOOLS = ("torch", "onnx", "onnxruntime", "nvidia-modelopt", "polygraphy", "tensorrt", "tensorrt-rtx", "ray", "timm")
RSS_SAMPLE_SECONDS = 0.02


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("edgepipe", *_TOOLS):  # edgepipe's own: the installed distribution's, from pipeline.__version__
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def host() -> dict[str, Any]:
    import psutil

    return {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "tools": tool_versions(),
    }


def describe_device(device: str = "cpu", compute_capability: str | None = None) -> str:
    """The machine the numbers come from: CPU model and cores, and the GPU (``compute_capability``: the
    NVIDIA GPU's, as ``pipeline.cuda.current_compute_capability`` finds it; None: no GPU)."""
    parts = [f"CPU {cpu_name()} ({os.cpu_count()} cores)"]
    if device == "cuda":
        import torch  # only asked for when PyTorch runs on the GPU

        if torch.cuda.is_available():
            parts.insert(0, f"GPU {torch.cuda.get_device_name(0)}")
    parts.append(f"NVIDIA GPU compute capability {compute_capability}" if compute_capability else "no NVIDIA GPU")
    return "; ".join(parts)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class PeakRSS:
    """Peak resident memory of this process while the block runs, sampled by a thread.

    ``resource.getrusage`` reports the peak since the process started (training, export...),
    not the block's own peak; sampling RSS does.
    """

    def __enter__(self) -> PeakRSS:
        import psutil

        self._process = psutil.Process()
        self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_SECONDS):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)
