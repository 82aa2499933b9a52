"""A YAML (or JSON) file the user names: read once, with one clear error when it is missing or not YAML.

Tolerance files (`check --tolerances`), preprocessing files (`--preprocess`) and models files
(`sweep --models-file`) are all read here, so each says the same thing about a bad file:

    raw = read_yaml(path, "tolerance file", fix="write one 'metric: amount' per line, e.g. 'top1: 0.3'")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.errors import EdgepipeError


def read_yaml(path: str | Path, what: str, fix: str, missing_fix: str | None = None) -> Any:
    """The parsed content of ``path`` (JSON is YAML); ``what`` names the file in errors ("models file")."""
    import yaml  # only commands given such a file read YAML

    path = Path(path)
    if not path.is_file():
        raise EdgepipeError(f"{what} {path} does not exist", fix=missing_fix or fix)
    try:
        return yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        raise EdgepipeError(
            f"{what} {path} is not valid YAML or JSON{f' (line {mark.line + 1})' if mark else ''}", fix=fix
        ) from None
