"""Calibration sets: class-balanced, seeded draws from a model's calibration pool, with its preprocessing.

A calibration set is what INT8 calibration sees of the world: images preprocessed exactly as the
model expects them, never the held-out images the artifacts are judged on. Every model takes the
same road:

    calib_set = calibration.draw_for("model.onnx", data="photos/", labels="labels.txt", num=512)
    calib_set = calibration.draw_for("se_resnet.pt")          # the data and split the model records
    calibration.save("calib.npz", calib_set)
    calib_set = calibration.load("calib.npz")
    calibration.check_matches(calib_set, model_input)
"""

from calibration.draw import draw, draw_for
from calibration.store import DEFAULT_NUM, MIN_TOTAL, CalibrationSet, batches, check_matches, load, save
