"""Each script is loaded with the part of ``_prelude.lua`` it uses (``_redis/prelude.py``):
the rule on a made-up prelude, and on the real scripts the proof that nothing they run is
left out (Lua 5.1's compiler lists every global a chunk reads or writes; a prelude function
left out would be one)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from asyncjobs._redis import scripts
from asyncjobs._redis.prelude import code_words, definitions, used_part

LUA = Path(scripts.__file__).parent / "lua"
SCRIPTS = sorted(p.stem for p in LUA.glob("*.lua") if p.stem != "_prelude")

MADE_UP = """\
-- The header: comments only.
local A, B = 1, 2

-- b reads A
local function b()
  return A
end
local function c() return 2 end  -- never used: b, d
-- d calls b
local function d(x)
  return b() + x
end
local T = {
  'd',
}
"""


def test_a_script_gets_what_it_uses_and_what_that_uses_in_order() -> None:
    part = used_part(MADE_UP, "return d(1)")
    assert part == ("-- The header: comments only.\nlocal A, B = 1, 2\n\n-- b reads A\n"
                    "local function b()\n  return A\nend\n"
                    "-- d calls b\nlocal function d(x)\n  return b() + x\nend\n")


def test_a_name_in_a_comment_is_no_use_and_one_in_a_string_is() -> None:
    assert used_part(MADE_UP, "return 1  -- c, d, T") == ""
    assert used_part(MADE_UP, "return redis.call('GET', 'c')") == \
        "local function c() return 2 end  -- never used: b, d\n"
    assert "local T" in used_part(MADE_UP, "return #T")


def test_a_double_dash_inside_a_string_starts_no_comment() -> None:
    assert code_words("local x = '--' .. c  -- d") == {"local", "x", "c"}
    assert code_words('local y = "a -- b" .. e') == {"local", "y", "a", "b", "e"}


def test_a_prelude_with_a_statement_that_defines_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="not a local definition"):
        definitions(MADE_UP + "x = 1\n")
    with pytest.raises(ValueError, match="cannot tell what it defines"):
        definitions("local function\n")


def test_the_prelude_splits_into_definitions_that_hold_all_its_code() -> None:
    prelude = scripts._prelude()
    defs = definitions(prelude)
    joined = "".join(d.text for d in defs)
    code = [line for line in prelude.splitlines() if line and not line.startswith("--")]
    assert [line for line in joined.splitlines() if line and not line.startswith("--")] == code
    defined = set().union(*(d.names for d in defs))
    assert set(re.findall(r"^local function (\w+)", prelude, re.M)) <= defined
    assert {"now_ms", "keep", "start_entry", "PUBLISH", "last_ms", "last_ms_text"} <= defined


def test_an_enqueue_defines_only_what_it_runs() -> None:
    source = scripts.load(scripts.ENQUEUE).source
    assert "local function kept_exists" in source and "local function now_ms" in source
    for unused in ("start_entry", "keep", "held_set", "release_lease", "trim_dead"):
        assert f"local function {unused}(" not in source
    prelude = scripts._prelude()
    functions = set(re.findall(r"^local function (\w+)", prelude, re.M))
    used = functions & set(re.findall(r"^local function (\w+)", source, re.M))
    assert used and 4 * len(used) <= len(functions)  # "a quarter of them at most"


LUA_GLOBALS = {"ARGV", "KEYS", "redis", "string", "table", "math", "tonumber", "tostring",
               "type", "pairs", "ipairs", "error", "pcall", "unpack", "select", "next",
               "assert", "cjson", "cmsgpack", "bit", "struct"}


@pytest.mark.parametrize("sharded", [False, True], ids=["publish", "spublish"])
@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_reads_no_global_but_lua_s_and_redis_s(name: str, sharded: bool,
                                                            tmp_path: Path) -> None:
    """Compiled by ``luac5.1 -l`` (Redis runs Lua 5.1): every GETGLOBAL / SETGLOBAL names a
    Lua library or Redis's API, so every prelude function the script calls is defined in
    its source (a left-out one would be read as a global, nil at run time)."""
    luac = shutil.which("luac5.1")
    if luac is None:
        # CI installs it (.ci/run); there a missing compiler is a failure, never a skip.
        if os.environ.get("CI"):
            pytest.fail("luac5.1 is not on PATH (apt-get install lua5.1)")
        pytest.skip("luac5.1 is not on PATH (apt-get install lua5.1)")
    path = tmp_path / f"{name}.lua"
    path.write_text(scripts.load(name, sharded).source)
    listing = subprocess.run([luac, "-p", "-l", str(path)], capture_output=True, text=True,
                             check=True).stdout
    used = set(re.findall(r"[GS]ETGLOBAL\s.*?; (\w+)", listing))
    assert used, listing[:500]  # the listing names globals (redis.call, at least)
    assert used <= LUA_GLOBALS, used - LUA_GLOBALS
