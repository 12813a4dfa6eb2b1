"""The module the processes of ``asyncjobs worker`` are started with (``python -m``)."""

from __future__ import annotations

import functools
import importlib.util


@functools.cache
def module() -> str:
    """``_asyncjobs_entry``, installed beside the package (a Ctrl-C while the new process
    imports asyncjobs then ends it quietly: see that module), or ``asyncjobs`` where it is
    missing (the package copied into a project on its own)."""
    found = importlib.util.find_spec("_asyncjobs_entry") is not None
    return "_asyncjobs_entry" if found else "asyncjobs"
