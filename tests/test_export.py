import json

import onnx
import pytest

from pipeline import export
from pipeline.errors import EdgepipeError
from pipeline.images import ModelInput, Record
from pipeline.onnxinfo import describe


def test_export_passes_checker_and_matches_pytorch(trained, tmp_path):
    path, config = trained
    result = export.export(path, tmp_path / "m.onnx")
    model = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert result["max_abs_diff"] <= 1e-4
    assert result["top1_agreement"] == 100.0
    assert result["samples"] == 359
    assert result["top1_onnx"] == pytest.approx(config["train"]["val_top1"])
    assert describe(model).batch == 1


def test_export_metadata_carries_what_later_stages_need(exported, trained):
    model = onnx.load(str(exported))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["edgepipe.model"] == "se_resnet"
    assert json.loads(meta["edgepipe.input_shape"]) == [1, 32, 32]
    assert json.loads(meta["edgepipe.class_names"]) == [str(i) for i in range(10)]
    assert len(meta["edgepipe.checkpoint_sha256"]) == 64
    record = Record.of_onnx(model)  # the same record the checkpoint's config holds
    assert record == ModelInput.of_config(trained[1]).record
    assert record.split == trained[1]["split"] and record.source == "digits"
    assert "edgepipe.config" not in meta
    assert describe(model).batch is None


def test_export_with_fixed_batch_pads_the_last_batch(trained, tmp_path):
    result = export.export(trained[0], tmp_path / "b8.onnx", batch=8)
    assert describe(onnx.load(str(tmp_path / "b8.onnx"))).batch == 8
    assert result["top1_agreement"] == 100.0


def test_existing_output_is_not_overwritten(trained, tmp_path):
    out = tmp_path / "m.onnx"
    out.write_text("keep me")
    with pytest.raises(EdgepipeError, match="already exists.*--force"):
        export.export(trained[0], out)
    assert out.read_text() == "keep me"
    export.export(trained[0], out, force=True)
    assert onnx.load(str(out)).graph.node


@pytest.mark.parametrize(
    "kwargs, message", [({"opset": 11}, "opset 11 is not supported"), ({"batch": 0}, "--batch must be at least 1")]
)
def test_bad_export_options(trained, tmp_path, kwargs, message):
    with pytest.raises(EdgepipeError, match=message):
        export.export(trained[0], tmp_path / "m.onnx", **kwargs)
    assert not list(tmp_path.iterdir())


def test_an_onnx_of_an_older_version_names_the_command_that_remakes_it(exported, tmp_path, runner):
    from conftest import invoke, one_line_error

    model = onnx.load(str(exported))
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in ("edgepipe.data", "edgepipe.class_names")]
    del model.metadata_props[:]
    for key, value in kept + [("edgepipe.config", "{}")]:
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(tmp_path / "old.onnx"))
    result = invoke(runner, "calibrate", "--checkpoint", tmp_path / "old.onnx", "-o", tmp_path / "calib.npz")
    one_line_error(result, "old.onnx was exported by an older edgepipe", "edgepipe export CHECKPOINT")
    assert not (tmp_path / "calib.npz").exists()
