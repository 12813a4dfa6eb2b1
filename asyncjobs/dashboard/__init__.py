"""The web dashboard: queues, workers, jobs, dead letters and cron schedules, live, with
actions (requeue, abort, purge, retry now) that ask first, are logged, and can be switched
off. An ASGI app (Starlette, Jinja2 templates, a small script of its own; no build step):
serve it with ``asyncjobs dashboard --redis-url ...`` or mount it in your app. Needs the
``dashboard`` extra (``pip install -e ".[dashboard]"`` in a clone).

::

    from asyncjobs.dashboard import create_app

    dashboard = create_app(redis_url="redis://localhost:6379/0", read_only=True)
    # uvicorn module:dashboard, or app.mount("/admin/jobs", dashboard) behind your auth

Every value read from Redis is escaped where it is drawn; job arguments can be hidden per
task (``redact=``); actions need a CSRF token only the dashboard's own page can send; the
Redis URL's password is never shown.
"""

from __future__ import annotations

from ..exceptions import ConfigurationError

try:
    from ._app import PoolSource, create_app
    from ._redact import HIDDEN, ArgsRedactor, Redaction
    from ._security import Auth
except ImportError as exc:  # pragma: no cover - exercised by a test that hides the package
    raise ConfigurationError(
        'the asyncjobs dashboard needs starlette and jinja2: install asyncjobs with its '
        '"dashboard" extra (pip install -e ".[dashboard]" in a clone; see the README, '
        f"Installing): {exc}"
    ) from exc

__all__ = ["HIDDEN", "ArgsRedactor", "Auth", "PoolSource", "Redaction", "create_app"]
