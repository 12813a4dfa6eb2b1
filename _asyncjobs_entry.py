"""The entry point of the ``asyncjobs`` command and of the worker processes it starts.

It lies outside the package so that it runs before Python imports asyncjobs: a Ctrl-C (or
a forwarded SIGINT) that comes while the package and its dependencies load, before a
handler of ours is installed, ends the process quietly, as SIGINT's default action does
(130 in a shell), not with a ``KeyboardInterrupt`` traceback. ``python -m asyncjobs`` does
the same once the package is imported (see ``asyncjobs.__main__``).
"""

# Only modules every Python has loaded before running a script: an import here is one more
# moment for a traceback.
import os
import sys


def main() -> None:
    """Run the command line (or the worker an ``asyncjobs worker`` execs into): see the
    module docstring."""
    try:
        from asyncjobs.__main__ import run

        run()
    except KeyboardInterrupt:
        import signal

        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        sys.exit(130)  # (where SIGINT's default action does not end the process)


if __name__ == "__main__":
    main()
