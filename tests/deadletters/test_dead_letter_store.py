"""The dead-letter store against a real redis-server."""

from __future__ import annotations

import logging
import time
import uuid

import pytest
from faultsuite import AofRedis

from gateways.core.config import parse_config
from gateways.core.deadletters import DeadLetterStore, describe_error


def _config(url: str, prefix: str, extra: str = ""):
    return parse_config(f"layer:\n  url: {url}\n  prefix: {prefix}\n{extra}")


@pytest.fixture
async def store(redis_server):
    store = DeadLetterStore.from_config(_config(redis_server.url, f"dl{uuid.uuid4().hex[:8]}"))
    yield store
    await store.close()


async def _add(store: DeadLetterStore, channel: str = "orders", n: int = 0, **kwargs) -> str:
    now = time.time()
    values = {"protocol": "mqtt", "channel": channel,
              "message": {"type": "mqtt.message", "id": f"m{n}", "payload": b"\x00\xffraw"},
              "error": "ValueError: boom\nTraceback ...", "attempts": 3,
              "first_failure": now - 10, "last_failure": now, **kwargs}
    return await store.add(**values)


async def test_add_get_list_keep_the_whole_entry_and_its_bytes(store):
    entry_id = await _add(store)
    entry = await store.get(entry_id)
    assert entry is not None
    assert (entry.protocol, entry.channel, entry.message_id, entry.attempts, entry.direction) == (
        "mqtt", "orders", "m0", 3, "inbound")
    assert entry.message["payload"] == b"\x00\xffraw"
    assert entry.error_line == "ValueError: boom"
    assert entry.last_failure - entry.first_failure == pytest.approx(10)
    assert [e.id for e in await store.list()] == [entry_id]
    assert await store.get("no-such-id") is None


async def test_list_filters_by_channel_oldest_first_and_limits(store):
    first = await _add(store, "a", 1)
    second = await _add(store, "b", 2)
    third = await _add(store, "a", 3, direction="outbound")
    assert [e.id for e in await store.list()] == [first, second, third]
    assert [e.id for e in await store.list("a")] == [first, third]
    assert [e.id for e in await store.list(limit=2)] == [first, second]
    assert (await store.get(third)).direction == "outbound"
    with pytest.raises(ValueError):
        await _add(store, direction="sideways")


async def test_drop_removes_one_entry_and_reports_unknown_ids(store):
    keep, gone = await _add(store, n=1), await _add(store, n=2)
    assert await store.drop(gone) is True
    assert await store.drop(gone) is False
    assert [e.id for e in await store.list()] == [keep]


async def test_retry_sends_then_removes_and_keeps_the_entry_when_sending_fails(store):
    entry_id = await _add(store)
    sent = []

    async def failing(channel, message):
        raise ConnectionError("layer down")

    with pytest.raises(ConnectionError):
        await store.retry(entry_id, failing)
    assert await store.get(entry_id) is not None

    async def send(channel, message):
        sent.append((channel, message))

    assert await store.retry(entry_id, send) is True
    assert sent == [("orders", {"type": "mqtt.message", "id": "m0", "payload": b"\x00\xffraw"})]
    assert await store.get(entry_id) is None
    assert await store.retry(entry_id, send) is False


async def test_summary_counts_per_channel_with_the_oldest_age(store):
    assert await store.summary() == {}
    first = await _add(store, "a", 1)
    await _add(store, "a", 2)
    await _add(store, "b", 3)
    summary = await store.summary()
    assert {channel: count for channel, (count, _) in summary.items()} == {"a": 2, "b": 1}
    assert all(age >= 0 for _, age in summary.values())
    await store.drop(first)
    await store.drop((await store.list("b"))[0].id)
    assert {channel: count for channel, (count, _) in (await store.summary()).items()} == {"a": 1}


async def test_max_entries_drops_the_oldest_with_a_warning(redis_server, caplog):
    config = _config(redis_server.url, f"dl{uuid.uuid4().hex[:8]}", "dead_letters:\n  max_entries: 3\n")
    store = DeadLetterStore.from_config(config)
    try:
        ids = [await _add(store, "c", n) for n in range(3)]
        with caplog.at_level(logging.WARNING, logger="gateway.dead_letters"):
            ids += [await _add(store, "c", n) for n in range(3, 5)]
        assert [e.id for e in await store.list()] == ids[2:]
        assert [e.id for e in await store.list("c")] == ids[2:]
        # One line for a burst: the second drop is counted in the next one.
        assert [r.getMessage() for r in caplog.records if "oldest" in r.getMessage()] == [
            "dropped the 1 oldest dead letters: the store holds at most 3 (dead_letters.max_entries)"]
        store._warned_at = float("-inf")
        with caplog.at_level(logging.WARNING, logger="gateway.dead_letters"):
            await _add(store, "c", 5)
        assert "dropped the 2 oldest dead letters" in caplog.records[-1].getMessage()
    finally:
        await store.close()


async def test_retention_drops_entries_older_than_it(redis_server, caplog):
    config = _config(redis_server.url, f"dl{uuid.uuid4().hex[:8]}", "dead_letters:\n  retention: 3600\n")
    store = DeadLetterStore.from_config(config)
    try:
        old = await _add(store, "r", 1)
        new = await _add(store, "r", 2)
        # Age the first entry as if stored two hours ago.
        await store.redis.zadd(store.prefix + "index", {old: time.time() - 7200})
        await store.redis.zadd(store.prefix + "channel:r", {old: time.time() - 7200})
        with caplog.at_level(logging.WARNING, logger="gateway.dead_letters"):
            assert [e.id for e in await store.list()] == [new]
        assert await store.get(old) is None
        assert any("older than the retention" in r.getMessage() for r in caplog.records)
    finally:
        await store.close()


async def test_encrypted_layer_encrypts_entries_at_rest(redis_server):
    prefix = f"dl{uuid.uuid4().hex[:8]}"
    config = _config(redis_server.url, prefix, "") 
    config.layer.symmetric_encryption_keys = ["secret"]
    store = DeadLetterStore.from_config(config)
    try:
        entry_id = await _add(store)
        raw = await store.redis.hget(store.prefix + "entries", entry_id)
        assert b"orders" not in raw and b"boom" not in raw
        assert (await store.get(entry_id)).message["payload"] == b"\x00\xffraw"
    finally:
        await store.close()


@pytest.mark.integration
async def test_entries_survive_a_restart_of_redis_with_persistence():
    server = AofRedis().start()
    prefix = f"dl{uuid.uuid4().hex[:8]}"
    try:
        store = DeadLetterStore.from_config(_config(server.url, prefix))
        entry_id = await _add(store)
        await store.close()
        server.restart()
        store = DeadLetterStore.from_config(_config(server.url, prefix))
        entry = await store.get(entry_id)
        assert entry is not None and entry.message["payload"] == b"\x00\xffraw"
        assert list(await store.summary()) == ["orders"]
        await store.close()
    finally:
        server.close()


def test_describe_error_holds_type_text_and_traceback():
    try:
        raise KeyError("missing")
    except KeyError as exc:
        text = describe_error(exc)
    assert text.splitlines()[0] == "KeyError: 'missing'"
    assert "Traceback" in text and "test_describe_error" in text


def test_memory_layer_has_no_store():
    with pytest.raises(ValueError, match="layer's Redis"):
        DeadLetterStore.from_config(parse_config("layer:\n  url: memory://\n"))


def test_dead_letters_section_is_validated():
    from gateways.core.config import ConfigError

    with pytest.raises(ConfigError) as raised:
        parse_config("dead_letters:\n  retention: 0\n  max_entries: many\n  colour: red\n")
    text = str(raised.value)
    assert "dead_letters.retention" in text and "dead_letters.max_entries" in text and "dead_letters.colour" in text
    assert parse_config("dead_letters:\n  retention: 60\n").dead_letters.retention == 60


async def test_gauges_show_count_and_oldest_age_per_channel_and_fall_to_zero(store):
    from gateways.core.deadletters import DeadLetterGauges
    from gateways.core.metrics import Metrics

    metrics = Metrics()
    gauges = DeadLetterGauges(store, metrics, max_age=0)
    first = await _add(store, "a", 1)
    await _add(store, "a", 2)
    await gauges.refresh()
    assert metrics.value("dead_letters", channel="a") == 2
    assert metrics.value("dead_letter_oldest_age_seconds", channel="a") >= 0
    assert 'gateway_dead_letters{channel="a"} 2' in metrics.render()
    for entry in await store.list():
        await store.drop(entry.id)
    assert await store.get(first) is None
    await gauges.refresh()
    assert metrics.value("dead_letters", channel="a") == 0


async def test_gauges_keep_their_values_when_redis_is_unreachable(redis_server):
    from gateways.core.deadletters import DeadLetterGauges
    from gateways.core.metrics import Metrics

    store = DeadLetterStore.from_config(_config("redis://127.0.0.1:1/0", "x"))
    metrics = Metrics()
    try:
        await DeadLetterGauges(store, metrics, max_age=0).refresh()
        assert "dead_letters" not in metrics.render()
    finally:
        await store.close()


@pytest.mark.integration
async def test_a_sentinel_layer_url_reaches_the_master():
    """``sentinel://`` as the layer uses it: the store asks the sentinel for the master."""
    import redis
    from servers import RedisServer
    from test_fault_sentinel import MASTER, Sentinel

    master = RedisServer().start()
    sentinel = Sentinel(master).start()
    try:
        store = DeadLetterStore.from_config(_config(f"sentinel://127.0.0.1:{sentinel.port}/{MASTER}/0", "sent"))
        try:
            entry_id = await _add(store)
            assert (await store.get(entry_id)).message_id == "m0"
        finally:
            await store.close()
        assert redis.Redis(port=master.port).hexists("sent:deadletters:entries", entry_id)
    finally:
        sentinel.close()
        master.close()
