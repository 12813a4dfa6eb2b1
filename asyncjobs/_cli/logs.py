"""Log set-up for the command line: readable text, or one JSON object per line.

Job lines carry ``job_id``, ``task``, ``queue``, ``attempt``, ``duration_s`` and ``outcome``
as record attributes, so the JSON form has them as fields.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from datetime import UTC, datetime
from enum import StrEnum

from .._text import safe_str
from ..exceptions import ConfigurationError

_FIELDS = ("job_id", "task", "queue", "attempt", "duration_s", "outcome")
_RESERVED = frozenset({*_FIELDS, "time", "level", "logger", "message", "exception"})
"""Names a job's log context cannot take, on any line (whether or not the line has them)."""


class LogLevel(StrEnum):
    """The levels ``--log-level`` takes (in any case)."""

    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"


class LogFormat(StrEnum):
    """The formats ``--log-format`` takes."""

    TEXT = "text"
    JSON = "json"


class JobLogs(StrEnum):
    """The per-job lines ``--job-logs`` keeps (warnings and errors are always logged)."""

    BOTH = "both"
    """A line when an attempt starts and one when it ends."""
    END = "end"
    """One line per attempt, when it ends."""
    FAILURES = "failures"
    """Only attempts that did not complete (retries, failures...)."""


def job_logs(choice: str) -> None:
    """Set the per-job loggers' levels for ``choice`` (see ``JobLogs``)."""
    from .._worker.outcomes import JOBS_LOGGER

    mode = JobLogs(choice)
    logging.getLogger(f"{JOBS_LOGGER}.started").setLevel(
        logging.NOTSET if mode is JobLogs.BOTH else logging.WARNING)
    logging.getLogger(JOBS_LOGGER).setLevel(
        logging.WARNING if mode is JobLogs.FAILURES else logging.NOTSET)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, job fields (with the
    job's log context, which never replaces a field of asyncjobs' own), exception."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _FIELDS:
            if hasattr(record, name):
                out[name] = getattr(record, name)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        context = getattr(record, "context", None)
        if isinstance(context, dict):  # the job's log context: fields of its own
            for key, value in context.items():
                name = safe_str(key, 64)
                if name not in _RESERVED:
                    out.setdefault(name, _context_value(value))
        return json.dumps(out, default=safe_str)


def _context_value(value: object) -> object:
    """A log context value as JSON: a bool, null, an int (64-bit) or a finite float as it
    is; anything else as text cut at 200 characters, whatever its ``__str__`` does."""
    if value is None or type(value) is bool:
        return value
    if type(value) is int and -(2**63) <= value < 2**64:
        return value
    if type(value) is float and math.isfinite(value):
        return value
    return safe_str(value, 200)


def check_level(level: str) -> str:
    """The level's name in capitals; ``ConfigurationError`` unless it is a ``LogLevel``."""
    names = [m.value for m in LogLevel]
    if level.upper() not in names:
        raise ConfigurationError(f"unknown log level {level!r}: use one of {', '.join(names)}")
    return level.upper()


def check_format(fmt: str) -> str:
    """``fmt`` in lower case; ``ConfigurationError`` unless it is 'text' or 'json'."""
    if fmt.lower() not in [m.value for m in LogFormat]:
        raise ConfigurationError(f"unknown log format {fmt!r}: use text or json")
    return fmt.lower()


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Send asyncjobs' logs (and the root logger's) to stderr in ``fmt`` ('text' | 'json').
    An unknown level or format raises ``ConfigurationError`` (before anything changes)."""
    level, fmt = check_level(level), check_format(fmt)
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
