"""Import the user's model code (a package module or a .py file) and call the callable that builds it.
Importing runs the user's code, so it is called only after the trust rule (``modelspec``). A file's folder
is first on sys.path, so ``from blocks import SE`` next to it works; a module imports as from the working folder.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.digest import sha256_file
from pipeline.errors import EdgepipeError


def error_line(exc: BaseException) -> str:  # e.g. "ModuleNotFoundError: No module named 'x'"
    return traceback.format_exception_only(type(exc), exc)[-1].strip()[:300]


@contextmanager
def _on_sys_path(folder: str) -> Iterator[None]:  # so the user's sibling imports resolve
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


def _import_module(dotted: str):
    try:
        with _on_sys_path(os.getcwd()):  # as `python -m` and uvicorn do: the working folder imports
            return importlib.import_module(dotted)
    except Exception as exc:  # the user's module may raise anything while importing
        raise EdgepipeError(
            f"module {dotted} does not import: {error_line(exc)}",
            fix="install the package or run edgepipe from the folder that holds it (or set PYTHONPATH)",
        ) from None


def _import_file(path: Path, sha256: str | None):
    # Unique per path and content: two model files named net.py never share a module.
    key = hashlib.sha256(f"{path}\0{sha256 or sha256_file(path)}".encode()).hexdigest()[:12]
    name = f"edgepipe_user_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_{key}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise EdgepipeError(f"model file {path} cannot be imported as Python", fix="pass a .py file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # registered first, as import does, so dataclasses and pickling work
    try:
        with _on_sys_path(str(path.parent)):
            module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise EdgepipeError(
            f"model file {path.name} does not import: {error_line(exc)}", fix=f"fix {path} so that `python {path}` runs"
        ) from None
    return module


def _find_callable(module, where: str, attr: str, text: str):
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n, None))]
            close = difflib.get_close_matches(part, names, n=3, cutoff=0.5)
            hint = ("; did you mean " + " or ".join(close) + "?") if close else ""
            raise EdgepipeError(
                f"{where} has no {attr}{hint}",
                fix="pass --model ...:NAME with the function or class that returns the model",
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise EdgepipeError(
            f"{text} is a {type(obj).__name__}, not a function or class",
            fix="name the function or class that returns the model",
        )
    return obj


def _accepted(fn, defaults: dict[str, Any]) -> dict[str, Any]:  # by name, or all of them through **kwargs
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature: pass nothing implicit
        return {}
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return dict(defaults)
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in defaults.items() if k in names}


def find_user_callable(spec) -> tuple[Any, str]:
    """A ``ModelSpec``'s callable, imported, and the folder it is called from."""
    if spec.kind == "file":
        path = Path(spec.target)
        module, where, folder = _import_file(path, spec.sha256), path.name, str(path.parent)
    else:
        module, where, folder = _import_module(spec.target), spec.target, os.getcwd()
    return _find_callable(module, where, spec.attr, spec.text), folder


def call_user_callable(spec, defaults: dict[str, Any]) -> Any:
    """``spec``'s callable called with the ``defaults`` it takes and the spec's args; the result unchecked."""
    fn, folder = find_user_callable(spec)
    kwargs = {**_accepted(fn, defaults), **spec.args}
    try:
        with _on_sys_path(folder):  # a callable may import its siblings lazily
            return fn(**kwargs)
    except Exception as exc:
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise EdgepipeError(
            f"{spec.text}({shown}) raised {error_line(exc)}",
            fix="check the --model-arg values against the callable's arguments",
        ) from None
