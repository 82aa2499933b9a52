"""TensorRT and TensorRT-RTX: the only package that imports ``tensorrt`` or ``tensorrt_rtx``."""
