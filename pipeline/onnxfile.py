"""Reading ONNX models and the edgepipe metadata that export writes into them."""

from __future__ import annotations

from pathlib import Path

import onnx

from pipeline.errors import EdgepipeError


def load_onnx(path: str | Path) -> onnx.ModelProto:  # one clear error for a missing, truncated or corrupt file
    path = Path(path)
    if not path.is_file():
        raise EdgepipeError(f"ONNX model {path} does not exist", fix="pass the path of an .onnx file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf raises DecodeError, onnx raises several others
        raise EdgepipeError(
            f"{path} is not a readable ONNX model ({type(exc).__name__})",
            fix="check the file is complete; export it again",
        )
    if not model.graph.node:
        raise EdgepipeError(f"{path} is not a valid ONNX model (it has no graph)", fix="export it again")
    return model


def read_metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {prop.key: prop.value for prop in model.metadata_props}


def set_metadata(model: onnx.ModelProto, values: dict[str, str]) -> None:
    current = {**read_metadata(model), **values}
    del model.metadata_props[:]
    for key, value in sorted(current.items()):
        model.metadata_props.add(key=key, value=value)
