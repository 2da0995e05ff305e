"""End to end: the Slack stand-in, a real `gateway slack`, a real runworker of
the demo project, real Redis. Every message the gateway emits is checked
against the schema (GATEWAY_STRICT=1)."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from gateways.core.config import LayerConfig
from gateways.core.layer import build_layer, close_layer

from .stack import SECRET, events_url, health_url, start_gateway, start_worker, write_config
from .standin import (BOT_ID, BOT_USER, HUMAN, SlackStandIn, block_actions_payload, command_payload,
                      event_callback, form_body, message_event, post_signed, view_submission_payload)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def stack(redis_server, tmp_path_factory):
    standin = SlackStandIn().start()
    prefix = f"s{uuid.uuid4().hex[:8]}"
    config = write_config(tmp_path_factory.mktemp("slack"), redis_server.url, standin, prefix)
    gateway = start_gateway(config, standin, connections=1)
    worker = None
    try:
        worker = start_worker(config)
        yield type("Stack", (), {"standin": standin, "config": config, "gateway": gateway, "worker": worker,
                                 "redis_url": redis_server.url, "prefix": prefix})
    finally:
        code = gateway.stop()
        if worker is not None:
            worker.stop()
        standin.stop()
    assert code == 0, f"gateway did not stop cleanly ({code}):\n{gateway.log()}"
    import os
    if os.environ.get("SLACK_SHOW_LOG"):
        print(gateway.log())


def channel() -> str:
    """A fresh Slack channel id, so tests do not see each other's posts."""
    return "C" + uuid.uuid4().hex[:9].upper()


def send_message(standin: SlackStandIn, chan: str, text: str, **kw) -> tuple[str, str]:
    """Deliver a message event over Socket Mode; return (envelope id, event id)."""
    body = event_callback(message_event(chan, text, **kw))
    return standin.send_envelope("events_api", body), body["event_id"]


def posts(standin: SlackStandIn, chan: str) -> list[str]:
    return [c.params.get("text") for c in standin.calls_of("chat.postMessage", channel=chan) if c.status == 200]


def wait_post(stack, chan: str, text: str, **params):
    try:
        return stack.standin.wait_call("chat.postMessage", channel=chan, text=text, **params)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n--- gateway ---\n{stack.gateway.log()[-4000:]}\n"
                             f"--- worker ---\n{stack.worker.log()[-4000:]}")


def test_echo_is_answered_in_the_same_channel_and_the_envelope_acked(stack):
    chan = channel()
    envelope, _ = send_message(stack.standin, chan, "echo hi")
    wait_post(stack, chan, "hi")
    ack = stack.standin.wait_ack(envelope)
    assert ack.payload is None
    # The ack came after the hand-off, which came before the reply.
    assert stack.standin.sent[envelope] <= ack.at


def test_health_reports_the_link_and_metrics_count_envelopes(stack):
    import urllib.request

    chan = channel()
    send_message(stack.standin, chan, "echo counted")
    wait_post(stack, chan, "counted")
    with urllib.request.urlopen(health_url(stack.config), timeout=10) as response:
        health = json.loads(response.read())
    assert response.status == 200
    assert health["healthy"] and health["identity"] and health["socket_mode_connected"]
    metrics_url = health_url(stack.config).replace("/healthz", "/metrics")
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        metrics = response.read().decode()
    assert 'gateway_slack_envelopes_total{kind="events_api"}' in metrics


def test_the_bots_own_messages_are_ignored(stack):
    chan = channel()
    own, _ = send_message(stack.standin, chan, "echo loop", user=BOT_USER)
    bot_post, _ = send_message(stack.standin, chan, "echo loop2", user=None, bot_id=BOT_ID, subtype="bot_message")
    send_message(stack.standin, chan, "echo marker")
    wait_post(stack, chan, "marker")
    stack.standin.wait_ack(own)
    stack.standin.wait_ack(bot_post)
    assert posts(stack.standin, chan) == ["marker"]


def test_edits_are_distinguishable_and_not_echoed(stack):
    chan = channel()
    edit = message_event(chan, "", subtype="message_changed",
                         message={"type": "message", "user": HUMAN, "text": "echo edited", "ts": "9.1"})
    stack.standin.send_envelope("events_api", event_callback(edit))
    send_message(stack.standin, chan, "echo after-edit")
    wait_post(stack, chan, "after-edit")
    assert posts(stack.standin, chan) == ["after-edit"]


def test_mention_join_and_reaction(stack):
    chan = channel()
    mention = {"type": "app_mention", "user": HUMAN, "text": f"<@{BOT_USER}> hi", "ts": "1700000001.000200",
               "channel": chan, "event_ts": "1700000001.000200"}
    stack.standin.send_envelope("events_api", event_callback(mention))
    wait_post(stack, chan, f"hello <@{HUMAN}>", thread_ts="1700000001.000200")

    join = {"type": "member_joined_channel", "user": "U0NEW", "channel": chan, "channel_type": "C",
            "team": "T0STANDIN", "event_ts": "1700000002.000100"}
    stack.standin.send_envelope("events_api", event_callback(join))
    wait_post(stack, chan, "welcome <@U0NEW>")
    leave = {"type": "member_left_channel", "user": "U0NEW", "channel": chan, "channel_type": "C",
             "team": "T0STANDIN", "event_ts": "1700000002.000200"}
    stack.standin.send_envelope("events_api", event_callback(leave))
    wait_post(stack, chan, "<@U0NEW> left")

    reaction = {"type": "reaction_added", "user": HUMAN, "reaction": "tada", "item_user": HUMAN,
                "item": {"type": "message", "channel": chan, "ts": "1700000003.000100"},
                "event_ts": "1700000004.000100"}
    stack.standin.send_envelope("events_api", event_callback(reaction))
    call = stack.standin.wait_call("reactions.add", channel=chan)
    assert call.params == {"channel": chan, "timestamp": "1700000003.000100", "name": "tada"}


def test_generic_events_are_handed_off_and_acked(stack):
    event = {"type": "channel_rename", "channel": {"id": channel(), "name": "renamed", "created": 1},
             "event_ts": "1700000005.000100"}
    envelope = stack.standin.send_envelope("events_api", event_callback(event))
    assert stack.standin.wait_ack(envelope).payload is None


def test_slash_command_is_answered_in_the_ack(stack):
    chan = channel()
    envelope = stack.standin.send_envelope("slash_commands", command_payload("/echo", "a b", chan))
    ack = stack.standin.wait_ack(envelope)
    assert ack.payload == {"response_type": "in_channel", "text": "a b"}


def test_unknown_command_gets_an_empty_ack_without_waiting_for_the_timeout(stack):
    envelope = stack.standin.send_envelope("slash_commands", command_payload("/other", "x", channel()))
    ack = stack.standin.wait_ack(envelope)
    assert ack.payload is None
    assert "no slack.ack" not in stack.gateway.log()


def test_button_click_is_answered_through_the_response_url(stack):
    chan = channel()
    url = stack.standin.response_url("click")
    envelope = stack.standin.send_envelope("interactive", block_actions_payload(chan, "pick", "blue", url))
    assert stack.standin.wait_ack(envelope).payload is None
    stack.standin.wait_for(lambda: [r for r in stack.standin.responses if r.params["id"] == "click"],
                           what="response_url post")
    (response,) = [r for r in stack.standin.responses if r.params["id"] == "click"]
    assert response.params["text"] == "you clicked blue" and response.params["replace_original"] is False


def test_view_submission_validation_errors_go_back_in_the_ack(stack):
    empty = view_submission_payload("note", {"note": {"input": {"type": "plain_text_input", "value": ""}}})
    envelope = stack.standin.send_envelope("interactive", empty)
    assert stack.standin.wait_ack(envelope).payload == {
        "response_action": "errors", "errors": {"note": "write something"}}
    filled = view_submission_payload("note", {"note": {"input": {"type": "plain_text_input", "value": "ok"}}})
    envelope = stack.standin.send_envelope("interactive", filled)
    assert stack.standin.wait_ack(envelope).payload is None


def test_options_requests_are_answered_in_the_ack(stack):
    suggestion = {"type": "block_suggestion", "user": {"id": HUMAN}, "team": {"id": "T0STANDIN"},
                  "channel": {"id": channel()}, "action_id": "colour", "block_id": "b1", "value": "bl",
                  "api_app_id": "A0STANDIN"}
    envelope = stack.standin.send_envelope("interactive", suggestion)
    payload = stack.standin.wait_ack(envelope).payload
    assert [o["value"] for o in payload["options"]] == ["blue", "black"]


def test_a_retried_event_reaches_the_consumer_once(stack):
    chan = channel()
    body = event_callback(message_event(chan, "echo once"))
    first = stack.standin.send_envelope("events_api", body)
    wait_post(stack, chan, "once")
    retry = stack.standin.send_envelope("events_api", body, retry_attempt=1, retry_reason="timeout")
    # The retry is acked (Slack stops retrying) but not handed off again.
    stack.standin.wait_ack(first)
    stack.standin.wait_ack(retry)
    send_message(stack.standin, chan, "echo marker")
    wait_post(stack, chan, "marker")
    assert posts(stack.standin, chan) == ["once", "marker"]


def test_messages_of_one_channel_are_answered_in_order(stack):
    chan = channel()
    texts = [f"n{i}" for i in range(25)]
    for text in texts:
        send_message(stack.standin, chan, f"echo {text}")
    stack.standin.wait_for(lambda: len(posts(stack.standin, chan)) == len(texts), what="25 posts")
    assert posts(stack.standin, chan) == texts


def test_rate_limited_posting_waits_for_retry_after(stack):
    chan = channel()
    stack.standin.rate_limit("chat.postMessage", 2, retry_after=1)
    send_message(stack.standin, chan, "echo limited")
    wait_post(stack, chan, "limited")
    limited = [c for c in stack.standin.calls_of("chat.postMessage", channel=chan) if c.status == 429]
    ok = [c for c in stack.standin.calls_of("chat.postMessage", channel=chan) if c.status == 200]
    assert len(limited) == 2 and len(ok) == 1
    # Retry-After was honoured: each retry came at least a second after the 429 before it.
    assert limited[1].at - limited[0].at >= 0.9 and ok[0].at - limited[1].at >= 0.9


# -- Events API over HTTP --------------------------------------------------------


def test_events_api_url_verification_and_signed_event(stack):
    url = events_url(stack.config)
    status, body = post_signed(url, json.dumps({"type": "url_verification", "challenge": "abc123",
                                                "token": "t"}).encode(), SECRET)
    assert (status, json.loads(body)) == (200, {"challenge": "abc123"})
    chan = channel()
    status, _ = post_signed(url, json.dumps(event_callback(message_event(chan, "echo over http"))).encode(),
                            SECRET)
    assert status == 200
    wait_post(stack, chan, "over http")


def test_events_api_refuses_bad_signatures_and_stale_timestamps(stack):
    url = events_url(stack.config)
    chan = channel()
    body = json.dumps(event_callback(message_event(chan, "echo forged"))).encode()
    status, text = post_signed(url, body, "wrong-secret")
    assert status == 401 and b"signature does not match" in text
    old = str(int(time.time()) - 3600)
    status, text = post_signed(url, body, SECRET, timestamp=old)
    assert status == 401 and b"replay" in text
    status, _ = post_signed(url, body, SECRET, signature="")
    assert status == 401
    status, _ = post_signed(url, json.dumps(event_callback(message_event(chan, "echo genuine"))).encode(), SECRET)
    assert status == 200
    wait_post(stack, chan, "genuine")
    assert posts(stack.standin, chan) == ["genuine"]
    assert "refused request" in stack.gateway.log()


def test_events_api_slash_command_and_retry_header(stack):
    url = events_url(stack.config)
    chan = channel()
    status, body = post_signed(url, form_body(command_payload("/echo", "via http", chan)), SECRET,
                               content_type="application/x-www-form-urlencoded")
    assert (status, json.loads(body)) == (200, {"response_type": "in_channel", "text": "via http"})
    event = json.dumps(event_callback(message_event(chan, "echo twice-http"))).encode()
    assert post_signed(url, event, SECRET)[0] == 200
    assert post_signed(url, event, SECRET, headers={"X-Slack-Retry-Num": "1",
                                                   "X-Slack-Retry-Reason": "http_timeout"})[0] == 200
    assert post_signed(url, json.dumps(event_callback(message_event(chan, "echo end"))).encode(), SECRET)[0] == 200
    wait_post(stack, chan, "end")
    assert posts(stack.standin, chan) == ["twice-http", "end"]


def test_malformed_http_bodies_get_400(stack):
    url = events_url(stack.config)
    assert post_signed(url, b"{not json", SECRET)[0] == 400
    assert post_signed(url, b"x=1", SECRET, content_type="text/plain")[0] == 415


# -- outbound straight from the layer -----------------------------------------------


async def _request(stack, message: dict) -> dict:
    layer = build_layer(LayerConfig(url=stack.redis_url, prefix=stack.prefix))
    try:
        reply = await layer.new_channel()
        await layer.send("slack.send", {**message, "reply_channel": reply})
        import asyncio

        return await asyncio.wait_for(layer.receive(reply), 30)
    finally:
        await close_layer(layer)


async def test_outbound_actions_report_results_to_the_reply_channel(stack):
    chan = channel()
    posted = await _request(stack, {"type": "slack.send", "action": "post", "channel": chan, "text": "v1",
                                    "id": "r1"})
    assert (posted["type"], posted["id"], posted["ok"], posted["error"]) == ("slack.result", "r1", True, None)
    ts = posted["response"]["ts"]
    updated = await _request(stack, {"type": "slack.send", "action": "update", "channel": chan, "ts": ts,
                                     "text": "v2"})
    assert updated["ok"] and updated["response"]["text"] == "v2"
    ephemeral = await _request(stack, {"type": "slack.send", "action": "ephemeral", "channel": chan,
                                       "user": HUMAN, "text": "psst"})
    assert ephemeral["ok"]
    removed = await _request(stack, {"type": "slack.send", "action": "delete", "channel": chan, "ts": ts})
    assert removed["ok"]
    again = await _request(stack, {"type": "slack.send", "action": "delete", "channel": chan, "ts": ts})
    assert (again["ok"], again["error"]) == (False, "message_not_found")
    generic = await _request(stack, {"type": "slack.send", "action": "call", "method": "auth.test"})
    assert generic["ok"] and generic["response"]["user_id"] == BOT_USER
    unknown = await _request(stack, {"type": "slack.send", "action": "call", "method": "no.such"})
    assert (unknown["ok"], unknown["error"]) == (False, "unknown_method")


async def test_slack_errors_and_invalid_sends_are_reported(stack):
    result = await _request(stack, {"type": "slack.send", "action": "post", "channel": "XBAD", "text": "x"})
    assert (result["ok"], result["error"]) == (False, "channel_not_found")
    result = await _request(stack, {"type": "slack.send", "action": "shout", "channel": "C1", "text": "x"})
    assert result["ok"] is False and result["error"].startswith("invalid_message:")
    result = await _request(stack, {"type": "slack.send", "action": "post", "channel": "C1"})
    assert result["ok"] is False and "needs text or blocks" in result["error"]
    assert "channel_not_found" in stack.gateway.log()


# -- the link ----------------------------------------------------------------------


def test_reconnects_after_the_socket_drops_and_after_disconnect_envelopes(stack):
    standin = stack.standin
    before = standin.hellos
    standin.drop_sockets()
    standin.wait_hellos(before + 1, timeout=60)
    standin.wait_connections(1)
    chan = channel()
    send_message(standin, chan, "echo after drop")
    wait_post(stack, chan, "after drop")

    before = standin.hellos
    standin.send_disconnect("refresh_requested")
    standin.wait_hellos(before + 1, timeout=60)
    standin.wait_for(lambda: standin.open_sockets == 1, what="the old socket closed")
    send_message(standin, chan, "echo after refresh")
    wait_post(stack, chan, "after refresh")
    assert "refresh_requested" in stack.gateway.log()



def test_a_link_that_keeps_failing_gets_a_fresh_url(stack):
    standin = stack.standin
    before, opened = standin.hellos, len(standin.calls_of("apps.connections.open"))
    standin.refuse_links(3)
    standin.drop_sockets()
    standin.wait_hellos(before + 1, timeout=90)
    assert standin.links_refused == 3
    # Each refused URL was burnt: connecting again took fresh ones.
    assert len(standin.calls_of("apps.connections.open")) - opened >= 2
    chan = channel()
    send_message(standin, chan, "echo after refusals")
    wait_post(stack, chan, "after refusals")


def test_reconnecting_backs_off_while_apps_connections_open_fails(stack):
    standin = stack.standin
    before = standin.hellos
    standin.fail_next("apps.connections.open", "internal_error", times=2)
    standin.rate_limit("apps.connections.open", 1, retry_after=1)
    standin.drop_sockets()
    standin.wait_hellos(before + 1, timeout=90)
    opens = [c.status if c.response.get("ok") is not False or c.status == 429 else c.response["error"]
             for c in standin.calls_of("apps.connections.open")][-4:]
    assert opens == ["internal_error", "internal_error", 429, 200]
    assert "apps.connections.open failed: internal_error; retrying" in stack.gateway.log()
    chan = channel()
    send_message(standin, chan, "echo back again")
    wait_post(stack, chan, "back again")
