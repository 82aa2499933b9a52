"""Click commands, one module per stage. Each module lists its commands in ``COMMANDS``."""

import importlib
import pkgutil


def all_commands():
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        yield from getattr(module, "COMMANDS", [])
