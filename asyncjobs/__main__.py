"""``python -m asyncjobs`` runs the command line; with the worker's parsed options in the
environment (``asyncjobs worker`` execs into this), it runs that worker without the parser.

A Ctrl-C that comes before a handler of ours (while Python imports) ends the process
quietly, as SIGINT's default action does (130 in a shell), not with a traceback."""

import os
import signal
import sys

try:
    from ._cli.worker_run import open_std_fds

    open_std_fds()
    _options = os.environ.pop("ASYNCJOBS_WORKER_OPTIONS", None)
    if _options is not None:
        from ._cli.worker_run import main as _run_worker

        _run_worker(_options)
    else:
        from .cli import main

        main()
except KeyboardInterrupt:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)
    sys.exit(130)  # (where SIGINT's default action does not end the process)
