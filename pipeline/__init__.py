"""edgepipe: attention CNNs from PyTorch to ONNX, FP16/INT8 and TensorRT engines, validated."""

__version__ = "0.1.0"
