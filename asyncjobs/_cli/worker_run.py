"""The worker process behind ``asyncjobs worker``, without the command line's parser.

``asyncjobs worker`` parses and checks its options with typer, then replaces itself
(``exec``, same pid, same signals, same file descriptors) with ``python -m _asyncjobs_entry
worker ...`` carrying the parsed options in ``OPTIONS_ENV``; ``asyncjobs/__main__.py`` sees
that variable and comes here, so the process that runs jobs for days never imports typer,
click, rich or pydantic (about 12 MiB of its resident memory). Under ``typer``'s test
runner, or where ``exec`` is missing, the command calls ``run()`` in its own process.

This module imports only what a worker needs; errors are the command line's one line,
``asyncjobs: error: ...``, exit 2 for configuration and 1 for other asyncjobs errors.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import NoReturn

import anyio
import msgspec
from anyio.abc import TaskStatus

from .._routing import parse_queues
from .._text import clean
from .._worker.loop import run_in_new_loop
from .._worker.worker import Worker
from ..exceptions import AsyncJobsError, ConfigurationError, NotDrained, SerializationError
from . import entry, supervisor
from .logs import BANNER_LOGGER, configure, job_logs
from .target import ImportFailed, load

OPTIONS_ENV = "ASYNCJOBS_WORKER_OPTIONS"
"""Set by ``asyncjobs worker`` for the process it execs into; removed at once there, so
nothing the worker starts inherits it."""


class Changes(msgspec.Struct, forbid_unknown_fields=True):
    """The Worker settings given on the command line (None: the Worker's own)."""

    concurrency: int | None = None
    shutdown_grace_s: float | None = None
    prefix: str | None = None
    queues: list[str] | None = None
    burst: bool | None = None
    allow_eviction: bool | None = None


class Options(msgspec.Struct, forbid_unknown_fields=True):
    """What ``asyncjobs worker`` parsed and checked."""

    target: str
    argv: list[str]
    changes: Changes
    redis_url: str | None = None
    uvloop: bool = True
    log_level: str = "INFO"
    log_format: str = "text"
    job_logs: str = "both"
    metrics_port: int | None = None
    processes: int = 1


def error_line(message: str) -> str:
    """The command line's one-line error."""
    text = message if message.isprintable() else clean(message)
    return f"asyncjobs: error: {text}"


def run(options: Options, *, exiting: bool = False) -> int:
    """Run the worker ``options`` describe (as ``asyncjobs worker`` parsed them); the exit
    code. ``exiting``: the process exits next (see ``Worker._main``), as a program does; not
    when the command runs inside another program (typer's test runner)."""
    open_std_fds()
    try:
        return _run(options, exiting)
    except (ConfigurationError, SerializationError) as exc:
        print(error_line(str(exc)), file=sys.stderr)
        if isinstance(exc, ImportFailed):  # then the application's own frames
            print(exc.details, end="", file=sys.stderr)
        return 2
    except NotDrained as exc:  # under a supervisor: its own code (see supervisor.py)
        print(error_line(str(exc)), file=sys.stderr)
        return supervisor.NOT_DRAINED if os.environ.get(supervisor.INDEX_ENV) else 1
    except AsyncJobsError as exc:
        print(error_line(str(exc)), file=sys.stderr)
        return 1


def _run(options: Options, exiting: bool) -> int:
    configure(options.log_level, options.log_format)
    job_logs(options.job_logs)
    if os.environ.get(supervisor.INDEX_ENV, "0") != "0":  # one banner per supervisor
        logging.getLogger(BANNER_LOGGER).setLevel(logging.ERROR)
    runner = _worker(options.target, options.changes)
    count, metrics_port = options.processes, options.metrics_port
    if count > 1:
        if metrics_port:
            raise ConfigurationError(
                "--metrics-port with --processes: the processes cannot share one port; "
                "give --metrics-port 0 (each picks one)")
        return supervisor.Supervisor(supervisor.child_argv(options.argv), count,
                                     runner.config.shutdown_grace_s,
                                     burst=runner.config.burst, exiting=exiting).run()
    if metrics_port is not None:
        runner.metrics_port = metrics_port
    notice = supervisor.ready_notice()  # under --processes: tell the supervisor when ready
    status: TaskStatus[Worker] = _Ready(notice) if notice else anyio.TASK_STATUS_IGNORED
    run_in_new_loop(runner._main(options.redis_url, status, exiting=exiting),
                    use_uvloop=options.uvloop)
    return 0


class _Ready:
    """A worker's ``task_status`` under ``--processes``: tells the supervisor it is ready."""

    def __init__(self, notice: Callable[[], None]) -> None:
        self._notice = notice

    def started(self, value: object = None) -> None:
        self._notice()


def _worker(target: str, given: Changes) -> Worker:
    """The Worker at ``target``, with the options given on the command line applied."""
    found = load(target)
    if not isinstance(found, Worker):
        raise ConfigurationError(f"{target} is a {type(found).__name__}, not an "
                                 "asyncjobs.Worker")
    changes = {k: v for k, v in msgspec.structs.asdict(given).items() if v is not None}
    if "queues" in changes:  # -q critical=6 -q default=3: weighted
        changes["queues"], changes["weights"] = parse_queues(changes["queues"])
    return found.configure(**changes) if changes else found


def exec_worker(options: Options) -> NoReturn:
    """Replace this process with a lean one running ``options`` (see the module docstring):
    ``python [its interpreter flags] -m _asyncjobs_entry worker <the same arguments>``."""
    os.environ[OPTIONS_ENV] = msgspec.json.encode(options).decode()
    flags: list[str] = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
    argv = [sys.executable, *flags, "-m", entry.module(), *options.argv[1:]]
    open_std_fds()  # (the new process's output then works: see open_std_fds)
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:  # None: the fd was closed when Python started
            stream.flush()
    # A Ctrl-C while the new process imports stays pending (the mask survives exec) until
    # main() makes it end the process quietly, instead of a KeyboardInterrupt traceback.
    _mask(signal.SIG_BLOCK)
    try:
        os.execv(sys.executable, argv)
    finally:  # execv returns only by raising
        _mask(signal.SIG_UNBLOCK)


def open_std_fds() -> None:
    """Open any of fds 0, 1 and 2 that is closed (a launcher's ``>&-``) on ``/dev/null``,
    before the process opens anything else: a socket given fd 1 would get the output (and
    uvloop aborts on closing an fd below 3)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def _mask(how: int) -> None:
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(how, {signal.SIGINT})


def main(encoded: str) -> NoReturn:
    """``python -m _asyncjobs_entry`` with ``OPTIONS_ENV`` set: run the worker and exit. Until the
    worker (or the supervisor) handles SIGINT, a Ctrl-C ends the process at once and quietly
    (its default action: 130 in a shell), a pending one (see ``exec_worker``) now."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _mask(signal.SIG_UNBLOCK)
    try:
        options = msgspec.json.decode(encoded, type=Options)
    except msgspec.DecodeError as exc:
        print(error_line(f"{OPTIONS_ENV} holds no worker options ({exc})"), file=sys.stderr)
        sys.exit(2)
    sys.exit(run(options, exiting=True))
