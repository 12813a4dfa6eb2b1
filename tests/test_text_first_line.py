"""``_text.first_line``: the first line of an error (or of any text), cut and escaped, for a
log line or a message in parentheses; and the worker's log sites that wrote it inline as
``clean(str(exc).splitlines()[0][:300])``, which raised ``IndexError`` on an error of no
text (``"".splitlines()`` is ``[]``).

Redis can answer an error of no text: a script's ``redis.error_reply("")`` or
``{err = "ERR"}`` reaches redis-py as ``ResponseError('')``, which the worker takes for a
queue it cannot read (``runtime.refused``). Then the fetch loop's quarantine, its refused
blocking read, the burst check and the keep-alive raised ``IndexError`` from the line
meant to log it: an "internal error" of the loop, whose restart pause stopped every queue
(the keep-alive's: other workers could take over the worker's jobs and run them twice)."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
from redis.exceptions import ResponseError

from asyncjobs import _text
from asyncjobs._worker import fetcher, upkeep, waiting

CONTROLS = "".join(chr(c) for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)])


# -- the helper ------------------------------------------------------------------------------

def test_the_first_line_of_text() -> None:
    assert _text.first_line("WRONGTYPE Operation\nagainst a key") == "WRONGTYPE Operation"
    assert _text.first_line("one line") == "one line"
    assert _text.first_line("a\r\nb") == "a" and _text.first_line("a\rb") == "a"


@pytest.mark.parametrize("text", ["", "\n", "\n\n\n", "\r\n", " \n\t\n", "\u2028"])
def test_empty_text_or_only_line_breaks_is_empty(text: str) -> None:
    assert _text.first_line(text) == ""


def test_blank_lines_before_the_first_words_are_skipped() -> None:
    assert _text.first_line("\n\n  \nERR it failed\nmore") == "ERR it failed"


def test_control_characters_are_escaped_on_one_line() -> None:
    line = _text.first_line("a\x1b[31mred\tb\x00c\x85d\nnext")
    # \x85 (NEL) ends a line for str.splitlines, as \r, \x0b, \x0c, \x1c-\x1e do
    assert line == "a\\x1b[31mred\\tb\\x00c"
    line = _text.first_line("x" + CONTROLS.replace("\n", "").replace("\r", "")[:9])
    assert line.isprintable() and "\n" not in line


def test_a_backslash_cannot_forge_an_escape() -> None:
    assert _text.first_line("a\\x1b") == "a\\\\x1b"


def test_a_very_long_line_is_cut_at_the_limit() -> None:
    assert _text.first_line("x" * 100_000) == "x" * 300  # the default
    assert _text.first_line("y" * 1000 + "\nz", 200) == "y" * 200
    assert _text.first_line("short", 200) == "short"
    assert _text.first_line("abc", 0) == ""


def test_the_cut_counts_characters_before_escaping() -> None:
    """Cut first, then escaped: an escape is never cut in half (``\\x1`` alone)."""
    line = _text.first_line("\x1b" * 10, 4)
    assert line == "\\x1b" * 4


def test_an_exception_gives_its_first_line() -> None:
    assert _text.first_line(ValueError("bad value\nTraceback...")) == "bad value"
    assert _text.first_line(ResponseError("NOPERM no\x1b[2J")) == "NOPERM no\\x1b[2J"


@pytest.mark.parametrize("exc", [ResponseError(""), ValueError(), KeyError(""),
                                 RuntimeError("\n\n")])
def test_an_exception_of_no_text_is_named_by_its_class(exc: BaseException) -> None:
    """``str(KeyError(''))`` is ``"''"``: text, so that is its first line."""
    expected = "''" if isinstance(exc, KeyError) else type(exc).__name__
    assert _text.first_line(exc) == expected


class _Hostile(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


class _VeryHostile(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


class _Sly(str):
    def splitlines(self, keepends: bool = False) -> list[str]:
        raise RuntimeError("a str subclass's own methods are user code")


class _SlyText(Exception):
    def __str__(self) -> str:
        return _Sly("sly\nsecond")


def test_an_exception_whose_str_raises_never_raises() -> None:
    assert _text.first_line(_Hostile("x")) == "_Hostile('x')"  # safe_str: its repr
    line = _text.first_line(_VeryHostile())
    assert line == f"<unprintable {__name__}._VeryHostile>"
    assert _text.first_line(_SlyText()) == "sly"


def test_anything_else_is_its_text() -> None:
    assert _text.first_line(42) == "42" and _text.first_line(None) == "None"
    assert _text.first_line(object()).startswith("<object object at")


def test_never_a_line_break_or_a_control_character() -> None:
    for text in ["", "\n", CONTROLS, "a" + CONTROLS * 30, "\u2028x\u2029y", "é\x9b"]:
        line = _text.first_line(text)
        assert line.isprintable() or line == "", repr(line)


# -- the log sites, with an error of no text -------------------------------------------------

def test_a_queue_quarantined_for_an_empty_reason_is_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, "asyncjobs")
    bad = waiting.Quarantine()
    bad.add("q", "")  # raised IndexError
    assert bad.holds("q")
    [said] = [r.getMessage() for r in caplog.records]
    assert said.startswith("queue q cannot be read (no reason given);")


def test_a_quarantine_reason_is_its_first_line_escaped(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, "asyncjobs")
    waiting.Quarantine().add("q", "WRONGTYPE \x1b[2Jbad\nsecond line")
    [said] = [r.getMessage() for r in caplog.records]
    assert "(WRONGTYPE \\x1b[2Jbad)" in said and "second line" not in said


@pytest.mark.asyncio
async def test_a_refused_blocking_read_of_no_text_is_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "asyncjobs")
    await waiting._read_refused(waiting.Idle(), ResponseError(""), 1)  # raised IndexError
    [said] = [r.getMessage() for r in caplog.records]
    assert "refused the worker's blocking read (ResponseError)" in said


class _Pipe:
    def __init__(self, replies: list[Any]) -> None:
        self.replies = replies

    def zcard(self, key: str) -> None:
        pass

    def xlen(self, key: str) -> None:
        pass

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        return self.replies


@pytest.mark.asyncio
async def test_a_burst_check_refused_with_no_text_is_not_drained() -> None:
    keys = SimpleNamespace(delayed="p:q:delayed", stream="p:q:stream")
    pipe = _Pipe([0, ResponseError("")])
    rt: Any = SimpleNamespace(client=SimpleNamespace(pipeline=lambda transaction: pipe),
                              stores={"q": SimpleNamespace(keys=keys)}, unrecordable={},
                              undrained="")
    ex: Any = SimpleNamespace(running={}, settler=SimpleNamespace(idle=True))
    assert await fetcher._drained(rt, ex)  # raised IndexError
    assert rt.undrained == ("burst: not drained: Redis refuses to read p:q:stream "
                            "(ResponseError)")


@pytest.mark.asyncio
async def test_a_keep_alive_refused_with_no_text_is_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, "asyncjobs")

    async def touch(*args: Any) -> Any:
        raise ResponseError("")

    rt: Any = SimpleNamespace(stores={"q": SimpleNamespace(touch=touch)}, client=None,
                              consumer="me", lease_ms=15_000)
    ex: Any = SimpleNamespace(to_touch=lambda queue: ["held"])
    refusing: set[str] = set()
    assert await upkeep._touch_round(rt, ex, refusing)  # raised IndexError
    assert refusing == {"q"}
    [said] = [r.getMessage() for r in caplog.records]
    assert said.startswith("queue q: the jobs this worker runs from it cannot be kept alive "
                           "(ResponseError)")


def test_a_failed_watch_whose_error_cannot_be_read_is_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    """The watch of dry queues wrote ``str(exc)`` itself: an error whose ``__str__`` raises
    escaped its failure handler."""
    from asyncjobs._worker.watch import Watch

    caplog.set_level(logging.WARNING, "asyncjobs")
    watch = Watch(SimpleNamespace(client=None))  # type: ignore[arg-type]
    watch._failed(_Hostile("x"))  # raised from __str__
    watch._failed(ResponseError(""))
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "failed (_Hostile('x')): every queue" in said[0], said
