"""The part of ``_prelude.lua`` a script uses.

Redis runs a script's whole source on every call: each ``local function`` of the prelude
makes a closure, each ``local`` table a table, and all of it is garbage when the call
returns. A script is loaded with the definitions it uses (by name, directly or through
other definitions), in the prelude's order, and nothing else: an enqueue defines the few
prelude functions it runs (a quarter of them at most), not all of them.

The prelude's layout is the contract: every top-level statement is a ``local`` definition
starting at column 0 (``local function name(...)`` or ``local a, b = ...``), the lines up
to the next one (indented lines, ``end``, comments) belong to it, and nothing is defined
any other way. ``used_part`` refuses a prelude with another top-level statement. A name is
used wherever it occurs as a word outside a comment: more is kept than needed when a
string holds a definition's name, never less.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FUNCTION = re.compile(r"local function ([A-Za-z_][A-Za-z0-9_]*)\s*\(")
_LOCALS = re.compile(r"local ([A-Za-z_][A-Za-z0-9_]*(?:\s*,\s*[A-Za-z_][A-Za-z0-9_]*)*)\s*=")
_COMMENT = re.compile(r"--.*$")
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


@dataclass(frozen=True, slots=True)
class Definition:
    """One top-level statement of the prelude: the names it defines, the names its code
    uses, and its text (with the comment lines above it)."""

    names: frozenset[str]
    uses: frozenset[str]
    text: str


def code_words(lua: str) -> set[str]:
    """The words of ``lua`` outside comments (``--`` to the end of a line; a ``--`` inside
    a quoted string does not start one)."""
    words: set[str] = set()
    for line in lua.splitlines():
        masked = _QUOTED.sub(lambda m: "'" + "_" * (len(m.group()) - 2) + "'", line)
        cut = masked.find("--")
        code = line if cut < 0 else line[:cut]
        words.update(_WORD.findall(code))
    return words


def definitions(prelude: str) -> list[Definition]:
    """The prelude's top-level statements, in order, each with the comment lines right
    above it (the first one with the prelude's header)."""
    lines = prelude.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.startswith("local ")]
    for i, line in enumerate(lines):
        if not line[:1].isspace() and not line.startswith(("local ", "end", "--", "}")):
            raise ValueError(f"_prelude.lua line {i + 1} is a top-level statement that is "
                             f"not a local definition: {line.strip()!r}")
    firsts = []  # where each statement's text starts: the comment lines right above it
    for k, start in enumerate(starts):
        first = start
        while first > (starts[k - 1] + 1 if k else 0) and lines[first - 1].startswith("--"):
            first -= 1
        firsts.append(first)
    out = []
    for k, start in enumerate(starts):
        end = firsts[k + 1] if k + 1 < len(starts) else len(lines)
        first = firsts[k]
        body = "".join(lines[start:end])
        head = lines[start]
        found = _FUNCTION.match(head)
        if found:
            names = frozenset({found.group(1)})
        else:
            assigned = _LOCALS.match(head)
            if assigned is None:
                raise ValueError(f"_prelude.lua line {start + 1}: cannot tell what it "
                                 f"defines: {head.strip()!r}")
            names = frozenset(n.strip() for n in assigned.group(1).split(","))
        comments = "".join(lines[first:start])
        out.append(Definition(names, frozenset(code_words(body)) - names,
                              comments + body))
    return out


def used_part(prelude: str, body: str) -> str:
    """The definitions of ``prelude`` that ``body`` uses, directly or through the
    definitions it uses, in the prelude's order."""
    defs = definitions(prelude)
    wanted = code_words(body)
    keep = [False] * len(defs)
    changed = True
    while changed:
        changed = False
        for i, d in enumerate(defs):
            if not keep[i] and d.names & wanted:
                keep[i] = True
                wanted |= d.uses
                changed = True
    return "".join(d.text for d, kept in zip(defs, keep, strict=True) if kept)
