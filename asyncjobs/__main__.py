"""``python -m asyncjobs`` runs the command line; with the worker's parsed options in the
environment (``asyncjobs worker`` execs into this), it runs that worker without the parser."""

import os

_options = os.environ.pop("ASYNCJOBS_WORKER_OPTIONS", None)
if _options is not None:
    from ._cli.worker_run import main as _run_worker

    _run_worker(_options)
else:
    from .cli import main

    main()
