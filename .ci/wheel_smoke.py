"""Checks an asyncjobs installed from its wheel, the way a user installs it (run by
.ci/wheel-smoke with the clean venv's Python, in isolated mode, from a directory outside
the source tree).

    python -I wheel_smoke.py SOURCE_ROOT TRACKED_FILES

TRACKED_FILES lists the files git tracks under asyncjobs/ (one per line): each must be in
the installed distribution. Then: the package is imported from site-packages, never from
SOURCE_ROOT; py.typed ships; every Lua script compiles on a real redis-server (started on
a free port) and one job is enqueued, run by a burst worker and its result read back; the
pytest plugin's entry point and the console script are registered (the script loads). Any failure
exits non-zero with a line that says what is missing.
"""

from __future__ import annotations

import asyncio
import importlib.metadata as metadata
import sys
from importlib import resources
from pathlib import Path


def fail(message: str) -> None:
    print(f"wheel-smoke: FAILED: {message}", file=sys.stderr)
    raise SystemExit(1)


def check_location(source_root: Path) -> None:
    import asyncjobs

    location = Path(asyncjobs.__file__).resolve().parent
    if location.is_relative_to(source_root) or "site-packages" not in location.parts:
        fail(f"asyncjobs was imported from {location}, not from the installed wheel")
    version = metadata.version("asyncjobs-redis")
    if version != asyncjobs.__version__:
        fail(f"the distribution is {version} but asyncjobs.__version__ is {asyncjobs.__version__}")
    print(f"wheel-smoke: asyncjobs {version} imported from {location}")


def check_files(tracked: list[str]) -> None:
    installed = {str(f) for f in metadata.files("asyncjobs-redis") or []}
    missing = [name for name in tracked if name not in installed]
    if missing:
        fail(f"{len(missing)} file(s) of the package are not in the wheel: {missing[:10]}")
    if not resources.files("asyncjobs").joinpath("py.typed").is_file():
        fail("asyncjobs/py.typed is not installed (type checkers would ignore the package)")
    print(f"wheel-smoke: all {len(tracked)} package files installed, py.typed included")


def check_entry_points() -> None:
    # The plugin is only registered here: loading it needs pytest, which the wheel alone
    # does not bring (.ci/wheel-smoke runs pytest with it next).
    plugins = [ep.value for ep in metadata.entry_points(group="pytest11") if ep.name == "asyncjobs"]
    if plugins != ["asyncjobs.pytest_plugin"]:
        fail(f"the pytest11 entry point 'asyncjobs' is {plugins}, not asyncjobs.pytest_plugin")
    scripts = metadata.entry_points(group="console_scripts", name="asyncjobs")
    if [ep.value for ep in scripts] != ["_asyncjobs_entry:main"]:
        fail(f"the console script 'asyncjobs' is {[ep.value for ep in scripts]}")
    scripts["asyncjobs"].load()
    print("wheel-smoke: entry points registered: pytest11 asyncjobs, console_scripts asyncjobs")


async def check_redis() -> None:
    import asyncjobs
    from asyncjobs._redis import scripts
    from asyncjobs._redis.embedded import RedisServer

    names = sorted(p.name.removesuffix(".lua")
                   for p in resources.files("asyncjobs._redis").joinpath("lua").iterdir()
                   if p.name.endswith(".lua") and not p.name.startswith("_"))
    if len(names) < 10:
        fail(f"only {len(names)} Lua scripts installed: {names}")

    @asyncjobs.task
    async def add(ctx: asyncjobs.Context, a: int, b: int) -> int:
        return a + b

    with RedisServer() as server:
        async with asyncjobs.create_pool(server.url, prefix="smoke") as pool:
            for name in names:  # SCRIPT LOAD compiles: a syntax error fails here
                script = scripts.load(name)
                if await pool.client.script_load(script.source) != script.sha:
                    fail(f"redis-server gave {name}.lua another SHA")
            job = await pool.enqueue(add, 2, 3)
            await asyncjobs.Worker([add], prefix="smoke", burst=True).run(redis_url=server.url)
            result = await job.result(timeout=10)
            if result != 5:
                fail(f"the job's result is {result!r}, not 5")
    print(f"wheel-smoke: {len(names)} Lua scripts compile on redis-server; a job ran: 2 + 3 = 5")


def main() -> None:
    source_root = Path(sys.argv[1]).resolve()
    tracked = Path(sys.argv[2]).read_text().split()
    if not tracked:
        fail("no tracked files were given")
    if any(Path(p).resolve() == source_root for p in sys.path if p):
        fail(f"the source tree {source_root} is on sys.path")
    check_location(source_root)
    check_files(tracked)
    check_entry_points()
    asyncio.run(check_redis())
    print("wheel-smoke: ok")


if __name__ == "__main__":
    main()
