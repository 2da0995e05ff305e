"""The I/O pieces on their own, against the stand-in and a real redis-server:
the Web API caller's rate limits and errors, the dedup store, the ordering."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from gateways.slack.daemon import Serializer
from gateways.slack.dedup import MemoryDedup, RedisDedup
from gateways.slack.webapi import WebApi

from .standin import SlackStandIn


@pytest.fixture(scope="module")
def standin():
    server = SlackStandIn().start()
    yield server
    server.stop()


async def test_errors_come_back_as_results(standin):
    api = WebApi(standin.api_url, standin.bot_token)
    try:
        ok = await api.call("auth.test")
        assert ok.ok and ok.body["user_id"] == "U0BOT" and ok.error is None
        bad = await api.call("chat.postMessage", {"channel": "C1"})
        assert (bad.ok, bad.error, bad.body["error"]) == (False, "no_text", "no_text")
        wrong = await WebApi(standin.api_url, "xoxb-wrong").call("auth.test")
        assert (wrong.ok, wrong.error) == (False, "invalid_auth")
        app_token = await api.call("apps.connections.open", token=standin.app_token)
        assert app_token.ok and app_token.body["url"].startswith("ws://")
    finally:
        await api.close()


async def test_429_blocks_only_its_method_and_is_retried(standin):
    api = WebApi(standin.api_url, standin.bot_token, retries=3)
    try:
        standin.rate_limit("reactions.add", 1, retry_after=2)
        chan = "C" + uuid.uuid4().hex[:8].upper()
        limited = asyncio.create_task(api.call("reactions.add", {"channel": chan, "timestamp": "1.1",
                                                                  "name": "x"}))
        await asyncio.to_thread(standin.wait_call, "reactions.add", status=429, channel=chan)
        # While reactions.add waits out its Retry-After, other methods go on.
        posted = await api.call("chat.postMessage", {"channel": chan, "text": "meanwhile"})
        assert posted.ok and not limited.done()
        result = await limited
        assert result.ok
        calls = standin.calls_of("reactions.add", channel=chan)
        assert [c.status for c in calls] == [429, 200]
        assert calls[1].at - calls[0].at >= 1.9
    finally:
        await api.close()


async def test_retries_are_bounded_and_long_retry_after_is_not_waited(standin):
    api = WebApi(standin.api_url, standin.bot_token, retries=2, max_retry_after=5)
    try:
        chan = "C" + uuid.uuid4().hex[:8].upper()
        standin.rate_limit("chat.update", 3, retry_after=0)
        result = await api.call("chat.update", {"channel": chan, "ts": "1.1", "text": "x"})
        assert (result.ok, result.error) == (False, "ratelimited")
        assert len(standin.calls_of("chat.update", channel=chan)) == 3  # the call and 2 retries
        standin.rate_limit("chat.delete", 1, retry_after=3600)
        result = await api.call("chat.delete", {"channel": chan, "ts": "1.1"})
        assert (result.ok, result.error) == (False, "ratelimited")
        assert len(standin.calls_of("chat.delete", channel=chan)) == 1
    finally:
        await api.close()


@pytest.mark.integration
async def test_network_errors_are_retried_then_reported():
    api = WebApi("http://127.0.0.1:9/api/", "xoxb-x", retries=1)  # discard port: refused
    try:
        result = await api.call("auth.test")
        assert not result.ok and result.error.startswith("network_error")
    finally:
        await api.close()


async def test_response_url_accepts_plain_text_answers(standin):
    api = WebApi(standin.api_url, standin.bot_token)
    try:
        result = await api.post_response_url(standin.response_url("r"), {"text": "later"})
        assert result.ok and result.body == {"body": "ok"}
    finally:
        await api.close()


async def test_redis_dedup_claims_and_records(redis_server):
    first = RedisDedup(redis_server.url, f"t{uuid.uuid4().hex[:6]}", ttl=60)
    other = RedisDedup(redis_server.url, first.prefix, ttl=60)  # another instance
    try:
        assert await first.claim("Ev1") == "new"
        assert await other.claim("Ev1") == "busy"  # hand-off in flight elsewhere
        await first.release("Ev1")  # the hand-off failed
        assert await other.claim("Ev1") == "new"
        await other.done("Ev1")
        assert await first.claim("Ev1") == "done"
        await first.release("Ev1")  # a done id is never released
        assert await other.claim("Ev1") == "done"
        assert 0 < await first.redis.ttl(first._key("Ev1")) <= 60
    finally:
        await first.close()
        await other.close()


@pytest.mark.integration
async def test_redis_dedup_without_redis_lets_events_through():
    store = RedisDedup("redis://127.0.0.1:9/0", "t", ttl=60)
    try:
        assert await store.claim("Ev1") == "new"
        await store.done("Ev1")  # logged, not raised
    finally:
        await store.close()


async def test_memory_dedup():
    store = MemoryDedup(ttl=60)
    assert await store.claim("a") == "new"
    assert await store.claim("a") == "busy"
    await store.done("a")
    assert await store.claim("a") == "done"


async def test_serializer_keeps_arrival_order_per_key_and_survives_cancellation():
    order = Serializer()
    seen: list[str] = []

    async def work(key: str, name: str, delay: float) -> None:
        previous, mine = order.enter(key)  # synchronous: the place is taken at once
        try:
            await order.wait(previous)
            await asyncio.sleep(delay)
            seen.append(name)
        finally:
            order.leave(key, mine, previous)

    tasks = [asyncio.create_task(work("a", f"a{i}", 0.02 * (5 - i))) for i in range(5)]
    tasks.append(asyncio.create_task(work("b", "b0", 0)))
    victim = asyncio.create_task(work("a", "cancelled", 0))
    tasks.append(asyncio.create_task(work("a", "a-last", 0)))
    for _ in range(20):  # every task queued behind a0 (which works 0.1 s) before one is cancelled
        await asyncio.sleep(0)
    victim.cancel()
    started = time.monotonic()
    await asyncio.gather(*tasks)
    assert [n for n in seen if n.startswith("a")] == ["a0", "a1", "a2", "a3", "a4", "a-last"]
    assert seen.index("b0") == 0  # another key does not wait
    assert time.monotonic() - started < 30
    await asyncio.sleep(0)
    assert order._tails == {}


async def test_a_place_left_early_waits_for_its_predecessor():
    order = Serializer()
    first_prev, first = order.enter("k")
    skip_prev, skip = order.enter("k")  # e.g. a duplicate: nothing to hand off
    last_prev, last = order.enter("k")
    order.leave("k", skip, skip_prev)
    await asyncio.sleep(0)
    assert not last_prev.done()  # the last still waits for the first
    order.leave("k", first, first_prev)
    await asyncio.sleep(0)
    assert last_prev.done()
    order.leave("k", last, last_prev)
    assert order._tails == {}


async def test_methods_are_called_with_forms_and_nested_values_as_json(standin):
    from gateways.slack.webapi import form_fields

    assert form_fields({"a": "x", "b": [{"type": "divider"}], "c": False, "d": 3, "e": None}) == {
        "a": "x", "b": '[{"type": "divider"}]', "c": "false", "d": "3"}
    api = WebApi(standin.api_url, standin.bot_token)
    try:
        chan = "C" + uuid.uuid4().hex[:8].upper()
        blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*hi*"}}]
        result = await api.call("chat.postMessage", {"channel": chan, "blocks": blocks, "unfurl_links": False})
        assert result.ok
        (call,) = standin.calls_of("chat.postMessage", channel=chan)
        assert call.params == {"channel": chan, "blocks": blocks, "unfurl_links": "false"}
    finally:
        await api.close()
