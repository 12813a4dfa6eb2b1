"""The worker's import path, ``package.module:attribute``, imported (the current directory
is importable). Kept apart from ``loader`` so that the worker process imports no parser."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from ..exceptions import ConfigurationError


def load(path: str) -> Any:
    """Import the object at ``module:attribute`` (the current directory is importable)."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(f"expected 'package.module:attribute', got {path!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == module_name or module_name.startswith(missing + "."):
            raise ConfigurationError(f"cannot import {module_name!r}: no such module") from exc
        raise
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigurationError(
                f"module {module_name!r} has no attribute {attribute!r}"
            ) from None
    return target
