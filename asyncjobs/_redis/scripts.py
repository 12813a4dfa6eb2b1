"""Loads the Lua scripts in ``scripts/`` and runs them by SHA.

Each script is prepended with the part of ``_prelude.lua`` it uses (the Redis clock, shared
steps: see ``prelude``). Scripts run
with EVALSHA; after a Redis restart empties the script cache, a NOSCRIPT reply loads the
script and the call is repeated, for single calls and for pipelines alike (on a Redis
Cluster, the call is repeated with EVAL, which loads it on that node only: SCRIPT LOAD
would go to every master, and fail while one is down).

Notices are published with the command the prelude names in one place (``PUBLISH``);
each script also has a sharded variant, the same but for ``SPUBLISH`` there, which a
client that uses sharded pub/sub runs instead (``pubsub.sharded_pubsub``: a Redis Cluster
whose masters all run Redis 7.0 or later). A script's channels share its keys' hash tag,
so ``SPUBLISH`` stays in the slot the script runs in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from .cluster import is_cluster
from .prelude import used_part
from .pubsub import sharded_pubsub

KeyOrArg = str | bytes | int | float


@dataclass(frozen=True, slots=True)
class Script:
    """One Lua script: its name, full source and SHA1; ``sharded``: the variant that
    publishes with ``SPUBLISH``."""

    name: str
    source: str
    sha: str
    sharded: bool = False

    def variant(self, sharded: bool) -> Script:
        """This script publishing with ``SPUBLISH`` (``sharded``) or ``PUBLISH``."""
        return self if sharded == self.sharded else load(self.name, sharded)

    async def __call__(
        self, client: Redis, keys: Sequence[KeyOrArg], args: Sequence[KeyOrArg]
    ) -> Any:
        """Run the script (the variant for ``client``'s pub/sub); load it first if the
        server does not know it."""
        script = self.variant(await sharded_pubsub(client))
        if script is not self:
            return await script(client, keys, args)
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            if is_cluster(client):  # only the node of these keys lacks it: EVAL there
                return await client.eval(self.source, len(keys), *keys, *args)
            await client.script_load(self.source)
            return await client.evalsha(self.sha, len(keys), *keys, *args)


Call = tuple[Script, Sequence[KeyOrArg], Sequence[KeyOrArg]]


async def run_pipelined(client: Redis, calls: Sequence[Call]) -> list[Any]:
    """Run many script calls in one round trip; reload and repeat any that got NOSCRIPT.

    Other errors are raised (the first one) after every call has been attempted.
    """
    results = await run_each_pipelined(client, calls)
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


async def run_each_pipelined(client: Redis, calls: Sequence[Call]) -> list[Any]:
    """``run_pipelined``, but a call's error reply is returned in its place, so the
    caller can keep what the other calls did. An error that ends the round trip itself
    (a lost connection, a cluster node that does not answer) is raised: then which calls
    ran is unknown."""
    sharded = await sharded_pubsub(client)
    calls = [(script.variant(sharded), keys, args) for script, keys, args in calls]
    results = await _pipeline(client, calls)
    missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
    if missing:
        if is_cluster(client):  # only some nodes lack them: EVAL there (SCRIPT LOAD
            again = await _pipeline(client, [calls[i] for i in missing], source=True)
        else:                   # goes to every master, one of which may be down)
            for script in {calls[i][0] for i in missing}:
                await client.script_load(script.source)
            again = await _pipeline(client, [calls[i] for i in missing])
        for i, result in zip(missing, again, strict=True):
            results[i] = result
    return results


async def _pipeline(client: Redis, calls: Sequence[Call], source: bool = False) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for script, keys, args in calls:
        # as a plain command: redis-py's cluster pipeline refuses its evalsha method, and
        # routes this by its first key; with ``source``, EVAL (which caches the script)
        if source:
            pipe.execute_command("EVAL", script.source, len(keys), *keys, *args)
        else:
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
    return list(await pipe.execute(raise_on_error=False))


@cache
def _prelude() -> str:
    return _read("_prelude")


def _read(name: str) -> str:
    return resources.files("asyncjobs._redis").joinpath(f"lua/{name}.lua").read_text("utf-8")


_CLASSIC = "local PUBLISH = 'PUBLISH'\n"
_SHARDED = "local PUBLISH = 'SPUBLISH'\n"


def load(name: str, sharded: bool = False) -> Script:
    """The script ``scripts/<name>.lua``, with what it uses of the shared prelude (its
    sharded variant with ``sharded``); one object per script and variant."""
    return _load(name, sharded)


@cache
def _load(name: str, sharded: bool) -> Script:
    prelude = _prelude()
    if sharded:
        if prelude.count(_CLASSIC) != 1:
            raise RuntimeError("_prelude.lua must name its publish command in one line: "
                               f"{_CLASSIC.strip()}")
        prelude = prelude.replace(_CLASSIC, _SHARDED)
    body = _read(name)
    source = f"{used_part(prelude, body)}\n{body}"
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest(), sharded)


ENQUEUE = "enqueue"
START = "start"
TAKE = "take"
SETTLE = "settle"
RECLAIM = "reclaim"
IDLE = "idle"
TOUCH = "touch"
HANDBACK = "handback"
PROMOTE = "promote"
RESCHEDULE = "reschedule"
ABORT = "abort"
CRON = "cron"
LEASE_RENEW = "lease_renew"
LEASE_RELEASE = "lease_release"
LEASE_CLEAR = "lease_clear"
BEAT = "beat"
GROUP = "group"
FINAL = "final"
REQUEUE = "requeue"
PRUNE = "prune"
PROGRESS = "progress"
PURGE = "purge"
RATE = "rate"
CONCURRENCY = "concurrency"
