"""Key names: one hash tag (one Cluster slot) per queue, configurable prefix, validated names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from redis.crc import key_slot

from asyncjobs._redis.keys import GlobalKeys, Keys, check_name


def crc16_xmodem(data: bytes) -> int:
    """CRC16-CCITT (XMODEM), the checksum Redis Cluster uses (poly 0x1021, init 0)."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def hash_slot(key: str) -> int:
    """The Redis Cluster slot of a key, hash tags included (Cluster spec, "Hash tags")."""
    raw = key.encode()
    start = raw.find(b"{")
    if start != -1:
        end = raw.find(b"}", start + 1)
        if end != -1 and end != start + 1:
            raw = raw[start + 1 : end]
    return crc16_xmodem(raw) % 16384


def all_keys(keys: Keys) -> list[str]:
    return [
        keys.stream, keys.delayed, keys.dead, keys.job("abc123"), keys.job_prefix + "x",
        keys.stats, keys.leader, keys.cron, keys.done_channel("abc123"), keys.abort_channel,
        keys.wake_channel, keys.settings,
    ]


def test_crc16_matches_the_reference_check_value() -> None:
    # The Redis Cluster spec gives 0x31C3 for "123456789".
    assert crc16_xmodem(b"123456789") == 0x31C3


def test_hash_slot_uses_only_the_tag() -> None:
    assert hash_slot("{user1000}.following") == hash_slot("{user1000}.followers")
    assert hash_slot("foo{}{bar}") == crc16_xmodem(b"foo{}{bar}") % 16384


@pytest.mark.parametrize("queue", ["default", "emails", "q-1", "ünïcode", "a" * 200])
def test_every_key_of_a_queue_lands_in_one_slot(queue: str) -> None:
    keys = all_keys(Keys("asyncjobs", queue))
    assert all(f"{{{queue}}}" in key for key in keys)
    assert {hash_slot(key) for key in keys} == {hash_slot(f"{{{queue}}}")}


def test_different_queues_usually_land_in_different_slots() -> None:
    slots = {hash_slot(Keys("asyncjobs", f"queue{i}").stream) for i in range(50)}
    assert len(slots) > 45


def test_keys_are_distinct() -> None:
    keys = all_keys(Keys("asyncjobs", "default"))
    assert len(set(keys)) == len(keys)


def test_keys_have_the_documented_shape() -> None:
    keys = Keys("asyncjobs", "default")
    assert keys.stream == "asyncjobs:{default}:stream"
    assert keys.job("42") == "asyncjobs:{default}:job:42"
    assert keys.job_prefix == "asyncjobs:{default}:job:"
    assert keys.done_channel("42") == "asyncjobs:{default}:done:42"


@pytest.mark.parametrize("prefix", ["asyncjobs", "myapp", "tenant:7"])
def test_prefix_is_configurable(prefix: str) -> None:
    keys = Keys(prefix, "default")
    assert all(key.startswith(f"{prefix}:{{default}}:") for key in all_keys(keys))


def test_prefixes_keep_queues_apart() -> None:
    assert Keys("one", "q").stream != Keys("two", "q").stream


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        pytest.param("", "1-200 characters", id="empty"),
        pytest.param("a{b", "no braces", id="open-brace"),
        pytest.param("a}b", "no braces", id="close-brace"),
        pytest.param("a b", "no whitespace", id="space"),
        pytest.param("a\tb", "no whitespace", id="tab"),
        pytest.param("a\nb", "no whitespace", id="newline"),
        pytest.param("a\rb", "no whitespace", id="carriage-return"),
        pytest.param("a" * 201, "1-200 characters", id="too-long"),
        # bytes that are not UTF-8, as Python decodes a command line's argument
        pytest.param("q\udcff", "not valid text", id="lone-surrogate"),
        pytest.param("\ud800", "not valid text", id="lone-high-surrogate"),
    ],
)
@pytest.mark.parametrize("field", ["prefix", "queue"])
def test_invalid_names_are_refused(name: str, problem: str, field: str) -> None:
    args = {"prefix": "asyncjobs", "queue": "default", field: name}
    kind = "prefix" if field == "prefix" else "queue name"
    with pytest.raises(ValueError, match=kind) as info:
        Keys(args["prefix"], args["queue"])
    assert problem in str(info.value)
    assert repr(name) in str(info.value)


def test_check_name_returns_a_valid_name() -> None:
    assert check_name("queue name", "x" * 200) == "x" * 200


@pytest.mark.parametrize("prefix", ["asyncjobs", "myapp"])
def test_global_keys_spread_nothing_and_the_registry_shares_one_slot(prefix: str) -> None:
    g = GlobalKeys(prefix)
    keys = [g.queues, g.workers, g.worker("host-1")]
    assert keys == [f"{prefix}:queues", f"{prefix}:workers",
                    f"{prefix}:worker:{{{prefix}:workers}}host-1"]
    # no queue's tag: the queue names and the registry are not pinned to any queue's slot
    assert not any("{" in key for key in keys[:2])
    # a worker's record hashes like the workers' set (the heartbeat script writes both)
    assert key_slot(g.worker("host-1").encode()) == key_slot(g.workers.encode())
    assert key_slot(g.worker("other").encode()) == key_slot(g.workers.encode())


def test_the_readme_key_table_lists_every_key() -> None:
    """*How it uses Redis* lists every key asyncjobs writes, spelled as ``Keys`` and
    ``GlobalKeys`` build them; a new key must be sorted here (a key, or not one) and then
    documented."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme.split("## How it uses Redis", 1)[1].split("\n\n", 3)[2]
    cells = set(re.findall(r"^\| (.+?) \| ", table, re.M))
    listed = {name for cell in cells for name in re.findall(r"`([^`]+)`", cell)}
    k, g = Keys("<prefix>", "<queue>"), GlobalKeys("<prefix>")
    keys = {
        "stream": k.stream, "delayed": k.delayed, "dead": k.dead, "ended": k.ended,
        "job": k.job("<id>"), "stats": k.stats, "settings": k.settings,
        "waiting": k.waiting, "minute": k.minute(0).replace(":0", ":<n>"),
        "rate": k.rate("<task>", "<key>").replace(":6:", ":<len>:"),
        "concurrency": k.concurrency("<limit>"), "concurrency_wait": k.concurrency_wait("<limit>"),
        "concurrency_limits": k.concurrency_limits, "leader": k.leader, "cron": k.cron,
        "queues": g.queues, "workers": g.workers, "worker": g.worker("<name>"),
        "claim_timeouts": g.claim_timeouts,
    }
    kept_key = k.kept("A" * 22)
    assert kept_key is not None
    keys["kept"] = kept_key.replace("A" * 10, "<tag>")
    not_keys = {"prefix", "queue", "base", "shared", "job_prefix", "minute_prefix",
                "concurrency_prefix", "concurrency_wait_prefix", "done_channel",
                "abort_channel", "wake_channel"}
    public = {n for cls in (Keys, GlobalKeys) for n in dir(cls) if not n.startswith("_")}
    assert public == set(keys) | not_keys, "a new Keys attribute: a key or not?"
    assert {name: key for name, key in keys.items() if key not in listed} == {}
