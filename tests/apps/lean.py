"""A worker whose one task reports what its process holds: which parser modules are
imported (and every module, for the check of what a worker imports), its pid, and whether the
exec hand-over variable leaked into its environment, and how many objects start-up left in
the collector's permanent generation (``gc.freeze``), and the collector's young-generation
threshold."""

from __future__ import annotations

import gc
import os
import sys

import asyncjobs
from asyncjobs import Context

PARSERS = ("typer", "click", "rich", "pydantic", "shellingham")


@asyncjobs.task
async def inspect_process(ctx: Context) -> dict[str, object]:
    return {"parsers": sorted(m for m in PARSERS if m in sys.modules), "pid": os.getpid(),
            "options_env": os.environ.get("ASYNCJOBS_WORKER_OPTIONS"),
            "argv": sys.argv, "modules": sorted(sys.modules), "frozen": gc.get_freeze_count(),
            "young_threshold": gc.get_threshold()[0]}


worker = asyncjobs.Worker([inspect_process], prefix=os.environ.get("TEST_PREFIX", "asyncjobs"))
