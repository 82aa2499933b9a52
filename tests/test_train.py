import numpy as np
import pytest
import torch

import models
from pipeline import train
from pipeline.checkpoint import load_checkpoint
from pipeline.errors import EdgepipeError
from pipeline.images import ModelData, ModelInput, open_source
from pipeline.runtime import predict
from pipeline.runtime.pytorch import TorchRunner


def test_default_model_reaches_target_on_digits(trained):
    _, config = trained
    assert config["train"]["val_top1"] >= 98.0


def test_checkpoint_loads_with_weights_only_and_holds_config(trained):
    path, config = trained
    blob = torch.load(path, weights_only=True)
    assert set(blob) == {"state_dict", "config"}
    saved = blob["config"]
    assert saved["model"] == "se_resnet"
    assert saved["input_shape"] == [1, 32, 32]
    assert saved["class_names"] == [str(i) for i in range(10)]
    assert len(saved["preprocess"]["mean"]) == len(saved["preprocess"]["std"]) == 1
    assert saved["preprocess"]["resize"] == [32, 32]
    assert saved["split"]["counts"]["held_out"] == 359 and saved["split"]["stratified"] is True
    assert saved["data"]["sha256"] == saved["split"]["source_sha256"] == open_source("digits").sha256


def test_loaded_checkpoint_reproduces_accuracy(trained):
    path, config = trained
    model, loaded = load_checkpoint(path)
    x_val, y_val = ModelData.of(ModelInput.of_config(loaded)).batches().collect()
    accuracy = (predict(TorchRunner(model), x_val).argmax(1) == y_val).mean() * 100
    assert accuracy == pytest.approx(config["train"]["val_top1"])


def test_plain_state_dict_needs_and_takes_model_name(trained, tmp_path):
    path, _ = trained
    plain = tmp_path / "plain.pt"
    torch.save(torch.load(path, weights_only=True)["state_dict"], plain)
    with pytest.raises(EdgepipeError, match="plain state dict"):
        load_checkpoint(plain)
    model, config = load_checkpoint(plain, model_name="se_resnet")
    assert config["model"] == "se_resnet" and config["class_names"][0] == "0"


def test_training_is_deterministic_for_a_seed():
    _, a = train.train("se_resnet", epochs=1, seed=5, progress=False)
    _, b = train.train("se_resnet", epochs=1, seed=5, progress=False)
    assert a["train"]["val_top1"] == b["train"]["val_top1"]
    assert a["split"]["held_out_sha256"] == b["split"]["held_out_sha256"]


def test_bad_checkpoints(trained, tmp_path):
    path, _ = trained
    with pytest.raises(EdgepipeError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(EdgepipeError, match="not a readable checkpoint"):
        load_checkpoint(corrupt)
    with pytest.raises(EdgepipeError, match="is for model se_resnet, not eca_resnet"):
        load_checkpoint(path, model_name="eca_resnet")
    other = tmp_path / "other.pt"
    torch.save(models.create("eca_resnet", num_classes=3).state_dict(), other)
    with pytest.raises(EdgepipeError, match="does not fit model eca_resnet with 10 classes"):
        load_checkpoint(other, model_name="eca_resnet")


def test_unpickling_arbitrary_objects_is_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "config": np.dtype("float32")}, evil)
    with pytest.raises(EdgepipeError, match="not a readable checkpoint"):
        load_checkpoint(evil)


def test_unknown_model_suggests_close_names():
    with pytest.raises(EdgepipeError, match="did you mean 'se_resnet'"):
        train.train("se_resnt", epochs=1, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", models.names())
def test_every_zoo_model_reaches_target_on_digits(name):
    _, config = train.train(name, seed=0, progress=False)
    assert config["train"]["val_top1"] >= 98.0  # training time is measured by benchmarks/zoo.py


def test_translation_augmentation_scales_with_the_image_size():
    """Up to 2 px at the zoo's 32x32, up to 1/16 of the shorter side at larger sizes; content is moved, never rescaled."""
    import torch

    from pipeline.train import _shift

    generator = torch.Generator().manual_seed(0)
    for size, most in ((32, 2), (224, 14)):
        x = torch.zeros(256, 1, size, size)
        x[:, :, size // 2, size // 2] = 1.0  # one bright pixel in the middle of each image
        moved = _shift(x, generator)
        rows, cols = (moved[:, 0] == 1.0).nonzero()[:, 1:].T
        offsets = torch.cat([(rows - size // 2).abs(), (cols - size // 2).abs()])
        assert len(rows) == 256 and offsets.max() == most  # every image keeps its pixel; the largest offset is reached


def test_a_checkpoint_of_an_older_version_names_the_command_that_remakes_it(trained, tmp_path):
    path, _ = trained
    blob = torch.load(path, weights_only=True)
    old = {**blob["config"], "split": {"seed": 0, "val_fraction": 0.2, "val_indices": [1, 2]}}
    del old["preprocess"]
    torch.save({"state_dict": blob["state_dict"], "config": old}, tmp_path / "old.pt")
    from pipeline.checkpoint import model_input_of

    with pytest.raises(EdgepipeError, match="written by an older edgepipe") as info:
        model_input_of(tmp_path / "old.pt")
    assert "edgepipe train --model se_resnet --data digits" in str(info.value)
