"""What the ``asyncjobs`` command prints: whole names and numbers at 80 columns, honest
help, one line where there is nothing to show, and clear "not found" messages."""

from __future__ import annotations

import json

import pytest

import asyncjobs

from .conftest import Backend
from .procs import run_cli

pytestmark = [pytest.mark.slow]

COMMANDS = [[], ["worker"], ["demo"], ["info"], ["job"], ["enqueue"], ["check"], ["dlq"],
            ["dlq", "list"], ["dlq", "show"], ["dlq", "requeue"], ["dlq", "purge"]]


def cli(backend: Backend, *args: str, columns: int = 80) -> tuple[int, str, str]:
    done = run_cli(*args, "--redis-url", backend.url or "", "--prefix", backend.prefix,
                   env={"COLUMNS": str(columns)})
    return done.returncode, done.stdout, done.stderr


async def live_worker(pool: asyncjobs.Pool, name: str) -> None:
    seconds, micros = await pool.client.time()
    now = int(seconds) * 1000 + int(micros) // 1000
    info = {"name": name, "host": "web-1", "pid": 31337, "queues": ["default"],
            "concurrency": 100, "running": 12, "started": now - 7_200_000, "beat": now,
            "version": asyncjobs.__version__, "tasks": ["add"]}
    await pool.client.set(pool.global_keys.worker(name), json.dumps(info))
    await pool.client.zadd(f"{pool.prefix}:workers", {name: now})


@pytest.mark.asyncio
async def test_tables_keep_names_and_numbers_whole_at_80_columns(real: Backend) -> None:
    name = "web-1:31337:5f0069"
    async with real.pool() as pool:
        for i in range(3):
            await pool.enqueue("add", i, i)
        await pool.client.hset(pool.keys("default").stats,
                               mapping={"complete": 1234567, "failed": 89, "retry": 1000000})
        await live_worker(pool, name)
    code, out, err = cli(real, "info")
    assert code == 0, err
    assert "…" not in out and "..." not in out
    assert max(len(line) for line in out.splitlines()) <= 80
    rows = [line for line in out.splitlines() if line.startswith("│ default")]
    assert len(rows) == 2  # queues and totals
    assert "│       3 │" in rows[0]  # waiting
    assert rows[1] == "│ default │        3 │  1234567 │     89 │ 1000000 │"
    [worker] = [line for line in out.splitlines() if name in line]
    assert "31337" in worker and "12/100" in worker and "2.0h" in worker and "web-1 " in worker
    for header in ("waiting", "in flight", "oldest waiting", "complete", "retried",
                   "last beat"):
        assert header in out


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_no_bool_type_for_flags(command: list[str]) -> None:
    done = run_cli(*command, "--help", env={"COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    assert "<bool>" not in done.stdout and "Usage:" in done.stdout


def test_help_text_keeps_its_brackets() -> None:
    worker = run_cli("worker", "--help", env={"COLUMNS": "200"}).stdout
    assert "(needs the [metrics] extra)" in worker
    assert "redis://[user:password@]host:port/db" in worker


def test_shell_completion_is_offered() -> None:
    done = run_cli("--help", env={"COLUMNS": "200"})
    assert "--install-completion" in done.stdout and "--show-completion" in done.stdout
    # The shell is named: detecting it walks the process tree, which has no shell in it
    # when the suite runs detached (a CI service, a background job). Typer takes a named
    # shell only with its detection off (the switch its own tests use).
    shown = run_cli("--show-completion", "bash",
                    env={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert shown.returncode == 0 and "_ASYNCJOBS_COMPLETE" in shown.stdout


def test_an_empty_dead_letter_list_is_one_line(real: Backend) -> None:
    code, out, _ = cli(real, "dlq", "list")
    assert (code, out) == (0, "no dead letters on queue 'default'\n")
    code, out, _ = cli(real, "dlq", "list", "-q", "emails")
    assert (code, out) == (0, "no dead letters on queue 'emails'\n")
    code, out, _ = cli(real, "dlq", "list", "--json")
    assert (code, json.loads(out)) == (0, [])


def test_info_without_workers_says_so(real: Backend) -> None:
    code, out, _ = cli(real, "info")
    assert code == 0 and out.rstrip().endswith("no live workers")


@pytest.mark.asyncio
async def test_a_job_not_found_names_the_queues_searched(real: Backend) -> None:
    code, _, err = cli(real, "job", "nope")
    assert code == 1
    assert err.strip() == ("asyncjobs: error: no job 'nope' in queue 'default' (the only "
                           "known queue): never enqueued, or its result expired")
    async with real.pool() as pool:
        for queue in ("emails", "default", "billing"):
            await pool.enqueue(asyncjobs.task_ref("add").options(queue=queue), 1, 2)
    code, _, err = cli(real, "job", "nope", columns=200)
    assert code == 1 and "any known queue" not in err
    assert ("no job 'nope' in any of the 3 known queues ('billing', 'default', 'emails'): "
            "never enqueued, or its result expired") in err
    code, _, err = cli(real, "job", "nope", "-q", "emails")
    assert code == 1 and "no job 'nope' in queue 'emails'" in err
