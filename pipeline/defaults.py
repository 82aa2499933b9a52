"""The defaults a command's ``--help`` shows, known without importing any runtime.

Each is defined here once; the stage that uses it imports it from here, and so does the command
that shows it, which then starts without numpy, onnx or torch.
"""

DEFAULT_MODEL = "se_resnet"  # the zoo model a run trains when given nothing else
DEFAULT_DATA = "digits"  # the bundled digits: scikit-learn's load_digits, nothing downloads
DEFAULT_OPSET = 17  # the ONNX opset an export writes
MIN_OPSET, MAX_OPSET = 13, 20  # the opsets export writes (TensorRT needs >= 13 for INT8)
DEFAULT_MAX_DROP = 0.5  # top-1 points INT8 may lose against FP32
BUDGET_DEFAULT = "default"  # max_drop when the user gave no budget: the default one for the model's outputs
DEFAULT_MIN_AGREEMENT = 97.0  # argmax agreement with FP32 (%) INT8 keeps by default without labels (classes, sequences)
DEFAULT_MIN_COSINE = 0.99  # cosine with FP32 INT8 keeps by default for outputs that are neither (maps, boxes)
# The default cosine budget holds where the check images show at most this share of the error it allows
# (0.99: 0.995 on the check images), so that images the check never saw keep the budget too.
MAP_ERROR_SHARE = 0.5
DEFAULT_ATOL = 1e-5  # Polygraphy's defaults
DEFAULT_RTOL = 1e-5
DEFAULT_BATCH_SIZE = 64  # images per batch read from the user's data
SPLITS = ("auto", "held-out", "all")  # which of the user's images are judged on
DEFAULT_SWEEP_OUTPUT = "runs/sweep"
DEFAULT_CALIBRATION_SIZE = 512  # images in a calibration set
HIGH_PRECISIONS = ("fp16", "fp32")  # what INT8 keeps its sensitive nodes in
DEFAULT_BENCH_BATCHES = (1, 8)  # the batch sizes a run or a sweep cell benches
BENCH_WARMUP_MS = 100  # warm-up before a run's or a sweep cell's timed iterations
SKIPPED_NO_GPU = "skipped: no NVIDIA GPU"  # the status of an engine row on a machine without one
# ONNX Runtime CPU optimizers edgepipe turns off: WeightBiasQuantization folds a Conv's float bias into an
# INT32 DequantizeLinear computed in the scales' dtype, which overflows FP16 (an INT8 model with an FP16
# remainder then reads as 0.53 cosine on a detector the graph itself keeps at 0.97). TensorRT keeps biases in float.
ORT_DISABLED_OPTIMIZERS = ("WeightBiasQuantization",)
