"""Log set-up for the command line: readable text, or one JSON object per line.

Job lines carry ``job_id``, ``task``, ``queue``, ``attempt``, ``duration_s`` and ``outcome``
as record attributes, so the JSON form has them as fields.

A worker writes two lines a job by default, so the lines' cost is part of every job's: the
handler here writes the job end lines logged on an event loop's thread in batches (see
``BatchedStreamHandler``) and the text formatter builds the time's text once a second. A
stream that stops taking text (a full pipe) never blocks the logging call: see
``log_output``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import sys
import time
import traceback
import weakref
from collections.abc import Iterator
from datetime import UTC, datetime
from enum import StrEnum
from typing import TextIO

from .._text import clean, safe_str
from ..exceptions import ConfigurationError
from .log_output import MOST_BYTES, Output

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

    def __init__(self) -> None:
        super().__init__()
        self._encoder = json.JSONEncoder(default=safe_str)  # json.dumps(default=) makes one a call
        self._second = -1
        self._text = ""

    def _time(self, created: float) -> str:
        """``created`` in UTC, to the millisecond (ISO 8601), as ``datetime.fromtimestamp(
        created, UTC).isoformat(timespec="milliseconds")`` writes it (rounded to the
        microsecond, then cut); the date and second built once a second (handlers format
        under their lock: one writer at a time)."""
        second = math.floor(created)
        micros = round((created - second) * 1e6)
        if micros >= 1_000_000:
            second, micros = second + 1, micros - 1_000_000
        if second != self._second:
            self._text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        return "%s.%03d+00:00" % (self._text, micros // 1000)  # noqa: UP031

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": self._time(record.created),
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
        return self._encoder.encode(out)


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


TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


BANNER_LOGGER = "asyncjobs.worker.banner"
"""The logger of the worker's start-up banner (``_worker.startup.banner``; named here so the
command line's log set-up imports no worker code)."""


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT``, with the time's text (local time, to the millisecond, as
    ``logging.Formatter`` writes it) built once a second instead of once a line.

    The lines of the loggers ``literal`` and their children (asyncjobs' own: the banner,
    ``BANNER_LOGGER``, and every worker line), which show what the command line, the
    application and Redis gave (the prefix, queue, task and cron names, ids), are literal
    text: a control character in them is written as an escape (``\\x1b``, ``\\n``), so
    it cannot restyle the terminal or start a line of its own (a traceback still follows
    its line)."""

    def __init__(self, literal: tuple[str, ...] = ("asyncjobs",)) -> None:
        super().__init__(TEXT_FORMAT)
        self.literal = literal
        """The names of the loggers whose messages (and their children's) are escaped."""
        self._second = -1
        self._text = ""

    def formatMessage(self, record: logging.LogRecord) -> str:
        """The line, the message of a ``literal`` logger escaped (``format`` set
        ``record.message`` just before, as each formatter does)."""
        if not record.message.isprintable() and any(
                record.name == name or record.name.startswith(f"{name}.")
                for name in self.literal):
            record.message = clean(record.message)
        return super().formatMessage(record)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """The record's time as ``logging.Formatter`` writes it (``datefmt`` is not used)."""
        second = int(record.created)
        if second != self._second:  # handlers format under their lock: one writer at a time
            self._text = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = second
        return "%s,%03d" % (self._text, record.msecs)  # noqa: UP031  # logging's own form


_handlers: weakref.WeakSet[BatchedStreamHandler] = weakref.WeakSet()


EXIT_WAIT_S = 0.5
"""At exit, the longest wait for log lines still on their way to a stream that does not
take them (a full pipe: see ``log_output``)."""

JOB_END_LOGGER = "asyncjobs.worker.jobs"
"""The logger of the job end lines (``_worker.outcomes.JOBS_LOGGER``; named here so the
command line's log set-up imports no worker code)."""


class BatchedStreamHandler(logging.StreamHandler[TextIO]):
    """A ``StreamHandler`` that writes the lines below WARNING of the loggers ``names``
    (the job end lines: ``JOB_END_LOGGER``) logged on an event loop's thread in batches:
    once ``delay_s`` after the first of them (a timer of that loop), and at once when
    ``most`` are waiting, or when any other line is logged (a job's start, a warning, a
    line of another logger, one from a thread without a running loop: each writes, in
    order, the lines waiting before it), on ``flush()`` and at exit (``logging.shutdown``
    flushes every handler). A busy worker then writes once a job, its start line carrying
    the ends before it, instead of twice. What it gives up: a process killed outright
    (SIGKILL, a crash) loses the end lines of its last ``delay_s``; every other line, the
    start of the job that killed it included, is written before the logging call returns,
    while the stream takes text. One that does not (a full pipe) gets the lines from a
    thread instead, up to ``most_bytes`` waiting (``log_output.Output``): the event loop
    never waits on it. A child forked while lines wait starts without them (the parent
    writes them).
    """

    def __init__(self, stream: TextIO, delay_s: float = 0.05, most: int = 256,
                 names: frozenset[str] = frozenset({JOB_END_LOGGER}),
                 most_bytes: int = MOST_BYTES) -> None:
        super().__init__(stream)
        self.delay_s, self.most, self.names = delay_s, most, names
        self.output = Output(stream, self._dropped, most_bytes)
        """Where the lines go (the stream, or a thread when the stream is full)."""
        self._waiting: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        _handlers.add(self)

    def emit(self, record: logging.LogRecord) -> None:
        """Format ``record`` and write it now or with the next batch (called under the
        handler's lock, as ``Handler.handle`` calls it)."""
        try:
            self._waiting.append(self.format(record) + self.terminator)
            if (record.levelno >= logging.WARNING or record.name not in self.names
                    or len(self._waiting) >= self.most or not self._timed()):
                self._write()
        except RecursionError:  # as logging's own handlers: not a logging error
            raise
        except Exception:
            self._waiting.clear()
            self.handleError(record)

    def flush(self) -> None:
        """Write the lines waiting (a stream the output writes to through a descriptor of
        its own has nothing of this handler's to flush)."""
        with self.lock:  # type: ignore[union-attr]  # created in Handler.__init__
            self._write()

    def _timed(self) -> bool:
        """Whether a timer of the running loop will write the waiting lines (set one if
        none is set on this loop); False on a thread without a running loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        if self._timer is None or self._timer_loop is not loop:
            self._timer = loop.call_later(self.delay_s, self._due)
            self._timer_loop = loop
        return True

    def _due(self) -> None:
        """The timer: write what waits (nothing if a write came first)."""
        with self.lock:  # type: ignore[union-attr]
            try:
                self._write()
            except Exception:  # the stream is gone (closed, a broken pipe): nowhere to say so
                self._waiting.clear()

    def close(self) -> None:
        """Write what waits, and wait up to ``EXIT_WAIT_S`` in all for what the output's
        thread still has to write, then for the notice of lines dropped meanwhile
        (``logging.shutdown`` flushes and closes every handler at exit)."""
        with self.lock:  # type: ignore[union-attr]
            deadline = time.monotonic() + EXIT_WAIT_S
            try:
                self._write()
                if self.output.wait(EXIT_WAIT_S) and self.output.dropped:
                    self.output.write("")  # the notice, now that the thread is done
                    self.output.wait(max(0.0, deadline - time.monotonic()))
            except Exception:
                self._waiting.clear()
            self.output.close()
            super().close()

    def setStream(self, stream: TextIO) -> TextIO | None:
        """Write to ``stream`` from now on: what waits goes to the old one first (the
        output's thread finishes it there), the count of lines dropped to the new one."""
        with self.lock:  # type: ignore[union-attr]
            self._write()
            old = super().setStream(stream)
            if old is not None:
                previous = self.output
                self.output = Output(stream, self._dropped, previous.most_bytes)
                self.output.dropped, previous.dropped = previous.dropped, 0
                previous.close()
            return old

    def handleError(self, record: logging.LogRecord) -> None:
        """Report a line that could not be written, as ``logging`` does on stderr; when
        stderr is this handler's stream, through the handler's output (a report, too,
        never blocks the logging call on a full pipe)."""
        if not logging.raiseExceptions or sys.stderr is None:
            return
        if self.stream is not sys.stderr:
            super().handleError(record)
            return
        try:
            report = "".join(traceback.format_exception(sys.exc_info()[1]))
            self.output.write(f"--- Logging error ---\n{report}Message: "
                              f"{safe_str(record.msg, 200)}\nArguments: "
                              f"{safe_str(record.args, 200)}\n")
        except Exception:
            pass  # nowhere to say so

    def _write(self) -> None:
        """Write the waiting lines as one string (under the lock)."""
        self._timer = self._timer_loop = None  # a timer still set finds nothing, or less
        # The list is taken first: a signal handler that logs meanwhile starts a new one
        # (the lines it finds waiting are written once).
        waiting, self._waiting = self._waiting, []
        self.output.write("".join(waiting))  # with a notice of lines dropped, if any

    def _dropped(self, count: int) -> str:
        """The line saying ``count`` lines were dropped (in the handler's format)."""
        record = logging.LogRecord(
            "asyncjobs.logs", logging.WARNING, __file__, 0,
            "%d log lines were dropped: the log output took nothing for a while", (count,),
            None)
        return self.format(record) + self.terminator

    def _forget(self) -> None:
        """In a forked child: the lines waiting are the parent's to write."""
        self._waiting.clear()
        self._timer = self._timer_loop = None
        self.output.forget()


def _after_fork() -> None:
    for handler in list(_handlers):
        handler._forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


class _Holding(logging.Handler):
    """Keeps the records it is handed (``held``)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def held(name: str) -> Iterator[None]:
    """Hold back what the logger ``name`` logs while the block runs: logged as usual when
    the block ends, dropped when it raises. A one-shot command then prints only its error
    line when it fails (``create_pool``'s warning that Redis hides its settings, before
    the command is refused, is noise), and the warning when it succeeds."""
    logger = logging.getLogger(name)
    holding, propagate = _Holding(), logger.propagate
    logger.addHandler(holding)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(holding)
        logger.propagate = propagate
    for record in holding.records:  # (only when the block did not raise)
        logger.handle(record)


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
    """Send asyncjobs' logs (and the root logger's) to stderr in ``fmt`` ('text' | 'json'),
    Python's warnings too (logger ``py.warnings``: written by ``warnings`` itself, a warning
    would block on a full pipe, as a line did before ``log_output``). An unknown level or
    format raises ``ConfigurationError`` (before anything changes)."""
    level, fmt = check_level(level), check_format(fmt)
    handler = BatchedStreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in root.handlers:  # lines an earlier configure() holds go out first
        if isinstance(old, BatchedStreamHandler):
            old.close()  # (its output's thread done: the new handler's lines come after)
        else:
            old.flush()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
