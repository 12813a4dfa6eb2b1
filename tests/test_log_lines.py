"""The command line's log handler and formatters: lines written in batches from an event
loop's thread, never held back when they matter (warnings, other threads, exit, fork), and
the same text as logging's own formatter.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncjobs._cli.logs import TEXT_FORMAT, BatchedStreamHandler, JsonFormatter, TextFormatter
from asyncjobs._worker.outcomes import JOBS_LOGGER, log_end, log_start


class Counting(io.StringIO):
    """A stream that counts its writes and flushes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.flushes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)

    def flush(self) -> None:
        self.flushes += 1


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, Counting, BatchedStreamHandler]]:
    stream = Counting()
    handler = BatchedStreamHandler(stream, delay_s=0.05, most=256,
                                   names=frozenset({"asyncjobs.test.batched"}))
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger("asyncjobs.test.batched")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG)
    yield log, stream, handler
    log.handlers.clear()
    log.propagate = True
    handler.close()


@pytest.mark.asyncio
async def test_lines_logged_on_a_loop_go_out_together_after_the_delay(
        logger: tuple[logging.Logger, Counting, BatchedStreamHandler]) -> None:
    log, stream, _ = logger
    for i in range(100):
        log.info("line %d", i)
    assert stream.getvalue() == ""  # held: nothing written yet
    await asyncio.sleep(0.2)
    assert stream.getvalue() == "".join(f"INFO line {i}\n" for i in range(100))
    assert stream.writes == 1


@pytest.mark.asyncio
async def test_a_warning_writes_at_once_after_the_lines_before_it(
        logger: tuple[logging.Logger, Counting, BatchedStreamHandler]) -> None:
    log, stream, _ = logger
    log.info("first")
    log.debug("second")
    log.warning("third")
    assert stream.getvalue() == "INFO first\nDEBUG second\nWARNING third\n"
    log.error("fourth")
    assert stream.getvalue().endswith("ERROR fourth\n")


@pytest.mark.asyncio
async def test_a_line_of_another_logger_writes_at_once_after_the_lines_before_it(
        logger: tuple[logging.Logger, Counting, BatchedStreamHandler]) -> None:
    """Only the batched loggers' lines wait: a job's start line, the worker's banner or a
    line of the task's own is written before the logging call returns (a process killed
    right after it still shows it), with the waiting lines before it."""
    log, stream, handler = logger
    log.info("an end line")
    assert stream.getvalue() == ""
    other = logging.getLogger("asyncjobs.test.other")
    other.addHandler(handler)
    other.propagate = False
    other.setLevel(logging.INFO)
    try:
        other.info("ready: a start line")
    finally:
        other.removeHandler(handler)
        other.propagate = True
        other.setLevel(logging.NOTSET)
    assert stream.getvalue() == "INFO an end line\nINFO ready: a start line\n"


def test_the_batched_logger_is_the_job_end_lines_one() -> None:
    from asyncjobs._cli.logs import JOB_END_LOGGER

    assert JOB_END_LOGGER == JOBS_LOGGER
    assert BatchedStreamHandler(io.StringIO()).names == frozenset({JOBS_LOGGER})


@pytest.mark.asyncio
async def test_a_full_batch_is_written_without_waiting(
        logger: tuple[logging.Logger, Counting, BatchedStreamHandler]) -> None:
    log, stream, handler = logger
    for i in range(handler.most * 3):
        log.info("%d", i)
    assert stream.writes == 3
    assert stream.getvalue().count("\n") == handler.most * 3


@pytest.mark.asyncio
async def test_a_line_from_another_thread_writes_the_waiting_ones_first(
        logger: tuple[logging.Logger, Counting, BatchedStreamHandler]) -> None:
    log, stream, _ = logger
    log.info("from the loop")
    await asyncio.to_thread(log.info, "from a thread")
    assert stream.getvalue() == "INFO from the loop\nINFO from a thread\n"


def test_without_a_running_loop_every_line_is_written_at_once(
        logger: tuple[logging.Logger, Counting, BatchedStreamHandler]) -> None:
    log, stream, _ = logger
    log.info("a")
    assert stream.getvalue() == "INFO a\n"
    log.info("b")
    assert stream.getvalue() == "INFO a\nINFO b\n"


def test_flush_writes_what_waits_and_a_later_loop_sets_its_own_timer(
        logger: tuple[logging.Logger, Counting, BatchedStreamHandler]) -> None:
    log, stream, handler = logger

    async def held() -> None:
        log.info("held")

    asyncio.run(held())  # the loop closes before its timer fires
    assert stream.getvalue() == ""
    handler.flush()
    assert stream.getvalue() == "INFO held\n"

    async def later() -> None:
        log.info("held again")
        await asyncio.sleep(0.2)

    asyncio.run(later())
    assert stream.getvalue() == "INFO held\nINFO held again\n"


def test_lines_held_by_a_closed_loop_go_out_with_the_next_loop_s(
        logger: tuple[logging.Logger, Counting, BatchedStreamHandler]) -> None:
    log, stream, _ = logger

    async def one(text: str, wait: float) -> None:
        log.info(text)
        await asyncio.sleep(wait)

    asyncio.run(one("first", 0))  # its timer never fires
    asyncio.run(one("second", 0.2))  # a timer of this loop writes both
    assert stream.getvalue() == "INFO first\nINFO second\n"


@pytest.mark.asyncio
async def test_a_broken_stream_is_logging_s_error_and_the_next_lines_still_go(
        logger: tuple[logging.Logger, Counting, BatchedStreamHandler],
        monkeypatch: pytest.MonkeyPatch) -> None:
    log, stream, handler = logger
    broken = {"on": True}
    real = stream.write

    def write(s: str) -> int:
        if broken["on"]:
            raise BrokenPipeError("gone")
        return real(s)

    monkeypatch.setattr(stream, "write", write)
    monkeypatch.setattr(logging, "raiseExceptions", False)  # handleError stays quiet
    log.info("lost on the timer")
    await asyncio.sleep(0.2)  # the timer's write fails: dropped, the loop goes on
    log.warning("lost at once")  # emit's write fails: handleError
    broken["on"] = False
    log.warning("written")
    assert stream.getvalue() == "WARNING written\n"
    assert handler._waiting == []


def test_process_exit_writes_what_waits() -> None:
    program = (
        "import asyncio, logging, sys\n"
        "from asyncjobs._cli.logs import configure\n"
        "configure('INFO')\n"
        "async def main():\n"
        "    for i in range(5):\n"
        "        logging.getLogger('asyncjobs.x').info('line %d', i)\n"
        "asyncio.run(main())\n"
        "sys.exit(0)\n")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0
    assert [line.split(": ", 1)[1] for line in done.stderr.splitlines()] == [
        f"line {i}" for i in range(5)]


def test_a_forked_child_does_not_write_its_parent_s_waiting_lines() -> None:
    program = (
        "import asyncio, logging, os, sys\n"
        "from asyncjobs._cli.logs import configure\n"
        "configure('INFO')\n"
        "async def main():\n"
        "    logging.getLogger('asyncjobs.x').info('parent line')\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        logging.getLogger('asyncjobs.x').warning('child line')\n"
        "        logging.shutdown()\n"
        "        os._exit(0)\n"
        "    os.waitpid(pid, 0)\n"
        "asyncio.run(main())\n")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert sorted(line.split(": ", 1)[1] for line in done.stderr.splitlines()) == [
        "child line", "parent line"]


@pytest.mark.asyncio
async def test_a_busy_loop_s_job_lines_take_one_write_per_batch() -> None:
    """What the batching buys, counted: 2 lines a job for 1,000 jobs in one write a job
    (each start line carries the end lines before it), and the ends of a run of jobs
    without starts (``--job-logs end``) in a few writes."""
    stream = Counting()
    handler = BatchedStreamHandler(stream)
    handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        log_start("job-0", "app:noop", "default", 1)
        assert "job started id=job-0" in stream.getvalue()  # written before it returned
        log_end("complete", "job-0", "app:noop", "default", 1, 0.001)
        for i in range(1, 1000):
            log_start(f"job-{i}", "app:noop", "default", 1)
            log_end("complete", f"job-{i}", "app:noop", "default", 1, 0.001)
        await asyncio.sleep(0.2)
        both = stream.writes
        for i in range(1000):
            log_end("complete", f"job-{i}", "app:noop", "default", 1, 0.001)
        await asyncio.sleep(0.2)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3000
    assert lines[0].endswith("INFO    asyncjobs.worker.jobs.started: job started id=job-0 "
                              "task=app:noop queue=default attempt=1")
    assert lines[1999].endswith("INFO    asyncjobs.worker.jobs: job complete id=job-999 "
                                "task=app:noop queue=default attempt=1 duration=0.001s")
    assert both <= 1000 + 1
    assert stream.writes - both <= 1000 // handler.most + 2


def test_job_lines_keep_their_fields_and_pass_the_logger_s_filters(
        caplog: pytest.LogCaptureFixture) -> None:
    ends = logging.getLogger(JOBS_LOGGER)
    dropped = logging.Filter("nothing-matches")
    with caplog.at_level(logging.INFO, logger="asyncjobs"):
        log_end("retry", "j1", "app:t", "q", 2, 0.5, tail=" retry_in=1.000s", level=logging.INFO,
                fields={"user": 7})
        ends.addFilter(dropped)
        try:
            log_end("complete", "j2", "app:t", "q", 1, 0.1)
        finally:
            ends.removeFilter(dropped)
    [record] = [r for r in caplog.records if r.name == JOBS_LOGGER]
    assert record.getMessage() == ("job retry id=j1 task=app:t queue=q attempt=2 "
                                   "duration=0.500s user=7 retry_in=1.000s")
    assert (record.job_id, record.task, record.queue, record.attempt, record.duration_s,
            record.outcome, record.context) == ("j1", "app:t", "q", 2, 0.5, "retry", {"user": 7})
    assert record.funcName == "log_end"
    assert record.pathname.endswith("outcomes.py")


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_the_text_formatter_writes_what_logging_s_own_does(created: float) -> None:
    ours, theirs = TextFormatter(), logging.Formatter(TEXT_FORMAT)
    record = logging.LogRecord("asyncjobs.x", logging.INFO, __file__, 1, "m %s", ("a",), None)
    record.created = created
    record.msecs = int((created - int(created)) * 1000) + 0.0
    assert ours.format(record) == theirs.format(record)
    record.created += 1.0  # the next second: the cached text is rebuilt
    assert ours.format(record) == theirs.format(record)


@settings(max_examples=500, deadline=None)
@given(st.floats(min_value=0, max_value=4e9, allow_nan=False)
       | st.integers(0, 4 * 10**9).map(lambda s: s + 0.9999996))
def test_the_json_time_is_what_datetime_writes(created: float) -> None:
    """The time of a JSON line, built once a second, is datetime's own text for it (UTC,
    rounded to the microsecond then cut to the millisecond: x.9999996 is the next second)."""
    formatter = JsonFormatter()
    record = logging.LogRecord("asyncjobs.x", logging.INFO, __file__, 1, "m", (), None)
    for moment in (created, created + 0.5, created + 3600):
        record.created = moment  # msecs left stale: the time comes from created alone
        want = datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")
        assert json.loads(formatter.format(record))["time"] == want


def test_lines_from_many_threads_are_whole_and_none_is_lost(
        logger: tuple[logging.Logger, Counting, BatchedStreamHandler]) -> None:
    log, stream, _ = logger

    def thread(k: int) -> None:
        async def body() -> None:
            for i in range(200):
                log.info("t%d-%d", k, i)
                if i % 50 == 0:
                    await asyncio.sleep(0)
        asyncio.run(body())

    threads = [threading.Thread(target=thread, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(0.01)
    logging.getLogger("asyncjobs.test.batched").handlers[0].flush()
    lines = stream.getvalue().splitlines()
    assert sorted(lines) == sorted(f"INFO t{k}-{i}" for k in range(4) for i in range(200))


def test_the_readme_shows_the_job_lines_the_worker_writes(
        caplog: pytest.LogCaptureFixture) -> None:
    """The sample under "one line per job start and end" in the README is what the command's
    text format writes for those two lines, time apart: the same loggers, level padding,
    fields and order."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("one line\nper job start and end:\n\n```\n", 1)[1].split("```", 1)[0]
    shown = [line.split(" ", 2)[2] for line in block.splitlines()]  # the date and time go
    caplog.set_level(logging.INFO, logger=JOBS_LOGGER)
    log_start("3f2a...", "send_welcome_email", "default", 1)
    log_end("complete", "3f2a...", "send_welcome_email", "default", 1, 0.113)
    formatter = TextFormatter()
    written = [formatter.format(r).split(" ", 2)[2] for r in caplog.records]
    assert written == shown
