"""``asyncjobs enqueue / job / info / check / dlq``, run as subprocesses against real Redis."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from .conftest import Backend
from .procs import WorkerProcess, run_cli

pytestmark = [pytest.mark.slow]


def cli(backend: Backend, *args: str) -> tuple[int, str, str]:
    done = run_cli(*args, "--redis-url", backend.url or "", "--prefix", backend.prefix)
    return done.returncode, done.stdout, done.stderr


def as_json(done: tuple[int, str, str]) -> Any:
    """The JSON a command printed; on failure, show everything it printed."""
    code, out, err = done
    try:
        return json.loads(out)
    except json.JSONDecodeError as exc:
        shown = f"stdout:\n{out}\nstderr:\n{err}"
        raise AssertionError(f"not JSON (exit {code}): {exc}\n{shown}") from exc


def burst(backend: Backend) -> None:
    proc = WorkerProcess("tests.apps.basic:worker", backend.url or "", backend.prefix, "--burst")
    try:
        assert proc.wait(60) == 0, proc.output
    finally:
        proc.close()


def test_enqueue_job_and_info(real: Backend) -> None:
    enqueued = as_json(cli(real, "enqueue", "add", "--arg", "40", "--kwarg", "b=2", "--json"))
    job_id = enqueued["job_id"]
    assert enqueued["state"] == "queued"
    queue = as_json(cli(real, "info", "--json"))["queues"][0]
    assert (queue["queue"], queue["waiting"], queue["in_flight"]) == ("default", 1, 0)
    assert queue["oldest_waiting_s"] is not None
    burst(real)
    record = as_json(cli(real, "job", job_id, "--json"))
    assert (record["state"], record["result"], record["args"]) == ("complete", 42, [40])
    assert record["kwargs"] == {"b": 2}
    code, out, _ = cli(real, "job", job_id)  # the table for people
    assert code == 0 and "complete" in out and "42" in out
    code, _, err = cli(real, "job", "nope")
    assert code == 1 and "no job 'nope'" in err


def test_check_reports_health_for_probes(real: Backend) -> None:
    code, _, err = cli(real, "check")
    assert code == 1 and "no live worker" in err
    proc = WorkerProcess("tests.apps.basic:worker", real.url or "", real.prefix)
    try:
        proc.wait_for("ready:")
        proc.wait_for("scheduler leads")  # a heartbeat has been written by now
        code, out, err = cli(real, "check", "--this-host")
        assert code == 0, err
        assert out.strip() == "healthy"
        code, out, _ = cli(real, "info", "--json")
        [worker] = json.loads(out)["workers"]
        assert worker["host"] == socket.gethostname() and worker["concurrency"] == 100
        for _ in range(5):
            assert cli(real, "enqueue", "slow", "--arg", "30")[0] == 0
        code, _, err = cli(real, "check", "--max-waiting", "0")
        assert code in (0, 1)  # jobs may already be running: waiting is 0 or more
    finally:
        proc.close()


def test_dead_letter_session(real: Backend) -> None:
    ids = []
    for why in ("card declined", "gateway timeout"):
        code, out, _ = cli(real, "enqueue", "fail", "--arg", json.dumps(why), "--json")
        ids.append(json.loads(out)["job_id"])
    burst(real)
    code, out, _ = cli(real, "dlq", "list", "--json")
    letters = json.loads(out)
    assert sorted(d["job_id"] for d in letters) == sorted(ids)
    assert letters[0]["at"] >= letters[1]["at"]  # newest first
    assert {d["reason"] for d in letters} == {"raised ValueError on try 1 of 1"}
    code, out, _ = cli(real, "dlq", "show", ids[0])
    assert code == 0 and "ValueError" in out and "raise ValueError(why)" in out
    code, out, _ = cli(real, "dlq", "requeue", ids[0])
    assert (code, out.strip()) == (0, f"{ids[0]}: requeued")
    code, out, _ = cli(real, "job", ids[0], "--json")
    assert json.loads(out)["state"] == "queued" and len(json.loads(out)["errors"]) == 1
    code, out, _ = cli(real, "dlq", "requeue", "--all", "--json")  # counts: bounded output
    assert (code, json.loads(out)) == (0, {"requeued": 1, "not_requeued": {}, "examples": {}})
    assert json.loads(cli(real, "job", ids[1], "--json")[1])["state"] == "queued"
    burst(real)  # both fail again and are dead-lettered again
    code, out, _ = cli(real, "dlq", "purge", "--yes")
    assert (code, out.strip()) == (0, "purged 2 dead letter(s)")
    assert json.loads(cli(real, "dlq", "list", "--json")[1]) == []
    code, _, err = cli(real, "dlq", "requeue")
    assert code == 2 and "give job ids, or --all" in err


def test_liveness_check_does_not_blame_the_worker_for_a_redis_outage() -> None:
    from asyncjobs._redis.embedded import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    this_host = run_cli("check", "--this-host", "--redis-url", url)
    assert this_host.returncode == 0
    assert "warning: cannot judge this host's worker" in this_host.stderr
    queues = run_cli("check", "--redis-url", url)
    assert queues.returncode == 1 and "asyncjobs: error: Redis unavailable" in queues.stderr
