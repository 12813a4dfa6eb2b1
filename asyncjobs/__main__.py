"""``python -m asyncjobs`` runs the command line; with the worker's parsed options in the
environment (``asyncjobs worker`` execs into ``python -m _asyncjobs_entry``, which runs
``run``), it runs that worker without the parser.

A Ctrl-C that comes before a handler of ours ends the process quietly, as SIGINT's default
action does (130 in a shell), not with a traceback: here once the package is imported; the
``asyncjobs`` command's own entry point (``_asyncjobs_entry``, outside the package) also
while Python imports it."""

import os
import signal
import sys


def run() -> None:
    """Run the worker of the options in the environment, or else the command line."""
    from ._cli.worker_run import OPTIONS_ENV, open_std_fds

    open_std_fds()
    options = os.environ.pop(OPTIONS_ENV, None)
    if options is not None:
        from ._cli.worker_run import main as run_worker

        run_worker(options)
    else:
        from .cli import main

        main()


if __name__ == "__main__":
    try:
        run()
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        sys.exit(130)  # (where SIGINT's default action does not end the process)
