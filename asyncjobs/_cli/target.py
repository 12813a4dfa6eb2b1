"""The worker's import path, ``package.module:attribute``, imported (the current directory
is importable). Kept apart from ``loader`` so that the worker process imports no parser."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from .._text import class_name, safe_str
from ..exceptions import ConfigurationError

_SHOWN_CHARS = 500
"""Of the message of the exception a module raised, in the one line (the whole of it is in
``ImportFailed.details``)."""


class ImportFailed(ConfigurationError):
    """The worker's module raised while Python imported it (a ``SyntaxError``, an error in
    its own code or in a module it imports): ``str()`` is one line; ``details`` is the
    traceback as Python prints it, from the application's own code down (without the frames
    of asyncjobs and of Python's import machinery above it)."""

    def __init__(self, message: str, details: str) -> None:
        super().__init__(message)
        self.details = details


class DependencyMissing(ImportFailed, ModuleNotFoundError):
    """The worker's module imports one that is not installed: an ``ImportFailed`` that is
    still the ``ModuleNotFoundError`` (its ``name``) a program may catch."""


def load(path: str) -> Any:
    """Import the object at ``module:attribute`` (the current directory is importable)."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(f"expected 'package.module:attribute', got {path!r}")
    if "" in module_name.split(".") or "/" in module_name or "\\" in module_name:
        raise ConfigurationError(
            f"expected 'package.module:attribute', got {path!r}: the module's dotted name, "
            "importable from the current directory (not a file path, not a relative name)")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == module_name or module_name.startswith(missing + "."):
            raise ConfigurationError(f"cannot import {module_name!r}: no such module") from exc
        raise _failed(module_name, exc) from exc
    except Exception as exc:  # the module's own code raised (SyntaxError included)
        raise _failed(module_name, exc) from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigurationError(
                f"module {module_name!r} has no attribute {attribute!r}"
            ) from None
    return target


def _failed(module_name: str, exc: Exception) -> ImportFailed:
    """``exc``, raised while importing ``module_name``, as one line and the application's
    own frames."""
    import traceback

    kind = type(exc)
    name = class_name(kind, "__qualname__")
    module = class_name(kind, "__module__")
    if module not in ("builtins", "__main__"):
        name = f"{module}.{name}"
    text = safe_str(exc, _SHOWN_CHARS)
    line = f"cannot import {module_name!r}: {name}: {text}" if text else (
        f"cannot import {module_name!r}: {name}")
    tb = exc.__traceback__
    while tb is not None and _machinery(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next  # this module's frame, then importlib's, down to the application's
    try:
        shown = traceback.TracebackException(kind, exc, tb)
        shown.stack = traceback.StackSummary.from_list(
            [frame for frame in shown.stack if not _machinery(frame.filename)])
        details = "".join(shown.format())
    except Exception:  # the exception's own code (a hostile class): the line alone
        details = ""
    if isinstance(exc, ModuleNotFoundError):
        missing = DependencyMissing(line, details)
        missing.name = exc.name
        return missing
    return ImportFailed(line, details)


def _machinery(filename: str) -> bool:
    """Whether a frame of ``filename`` is asyncjobs' loading or Python's import machinery
    (``importlib.import_module``, ``<frozen importlib._bootstrap>``)."""
    return (filename == __file__ or filename == importlib.__file__
            or filename.startswith("<frozen importlib."))
