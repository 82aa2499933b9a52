"""To the device: what a Jetson or a GPU server needs to build, prove and serve an edgepipe model.

Engines are not portable across TensorRT versions, and TensorRT-RTX has no Jetson target, so an
engine for a Jetson is built on it. This package writes what that takes, with nothing of edgepipe
needed on the device:

- ``targets``: the device targets (``jp5``, ``jp6``, ``jp7``, ``trt10``, ``trt11``, ``rtx``), the
  trtexec flags each TensorRT version has, DLA, and the precisions each builds from edgepipe's ONNX;
- ``bundle``: ``edgepipe package``: the ONNX at each precision, labels, preprocessing, ``build.sh``,
  golden inputs and outputs Polygraphy checks, a README of the commands to run on the device;
- ``fold`` / ``deepstream``: an ``nvinfer`` config, with mean/std folded into the ONNX and a
  softmax head for classifiers; ``triton``: a Triton model repository for the engine;
- ``jetson`` / ``power``: the Jetson's state (module, L4T, power mode, clocks, temperatures) and
  the energy of each rail over a timed window (``Telemetry.start()`` / ``stop()``).

``model.read_model`` is the one place a model's preprocessing and classes are read.
"""
