"""The pure translation: Slack's payloads in, slack.* messages out, checked
against protocol_specs/slack.schema.json."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from gateways.core.specs import InvalidMessage, load_schema
from gateways.slack import protocol
from gateways.slack.protocol import Identity, Ignored, Inbound

from .standin import (BOT_ID, BOT_USER, HUMAN, TEAM, block_actions_payload, command_payload, event_callback,
                      message_event, view_submission_payload)

SCHEMA = load_schema("slack")
ME = Identity(BOT_USER, BOT_ID, TEAM)


def emitted(inbound: Inbound, ack_channel: str = "specific.x!ack") -> dict:
    """The message as the gateway sends it, validated against the schema."""
    assert isinstance(inbound, Inbound), inbound
    message = {**inbound.message, "reply_channel": "slack.send"}
    if inbound.wants_ack_payload:
        message["ack_channel"] = ack_channel
    SCHEMA.validate(message)
    return message


def test_message_event_carries_team_channel_user_text_ts():
    body = event_callback(message_event("C1", "echo hi", ts="1.000100", thread_ts="1.000001"), event_id="Ev1")
    inbound = protocol.translate_event_callback(body, ME)
    msg = emitted(inbound)
    assert (msg["type"], msg["id"], msg["team"], msg["channel"], msg["user"]) == (
        "slack.message", "Ev1", TEAM, "C1", HUMAN)
    assert (msg["text"], msg["ts"], msg["thread_ts"], msg["subtype"]) == ("echo hi", "1.000100", "1.000001", None)
    assert msg["event"] == body["event"]
    assert inbound.dedup_key == "Ev1" and inbound.order_key == f"{TEAM}/C1"


def test_edits_and_deletes_stay_distinguishable():
    edit = message_event("C1", "", subtype="message_changed",
                         message={"type": "message", "user": HUMAN, "text": "new text", "ts": "5.1"},
                         previous_message={"type": "message", "user": HUMAN, "text": "old", "ts": "5.1"})
    msg = emitted(protocol.translate_event_callback(event_callback(edit), ME))
    assert (msg["subtype"], msg["text"], msg["ts"], msg["user"]) == ("message_changed", "new text", "5.1", HUMAN)
    delete = message_event("C1", "", subtype="message_deleted", deleted_ts="5.1",
                           previous_message={"type": "message", "user": HUMAN, "text": "old", "ts": "5.1"})
    msg = emitted(protocol.translate_event_callback(event_callback(delete), ME))
    assert (msg["subtype"], msg["text"], msg["ts"]) == ("message_deleted", "old", "5.1")


@pytest.mark.parametrize("event", [
    message_event("C1", "echo loop", user=BOT_USER),
    message_event("C1", "echo loop", user=None, bot_id=BOT_ID, subtype="bot_message"),
    message_event("C1", "", subtype="message_changed", message={"user": BOT_USER, "text": "echo x", "ts": "1.1"}),
    {"type": "reaction_added", "user": BOT_USER, "reaction": "x", "item": {"type": "message", "channel": "C1", "ts": "1"}},
])
def test_the_bots_own_events_are_ignored(event):
    assert isinstance(protocol.translate_event_callback(event_callback(event), ME), Ignored)


def test_another_bots_messages_are_not_ignored():
    event = message_event("C1", "echo x", user="U0OTHER", bot_id="B0OTHER", subtype="bot_message")
    assert emitted(protocol.translate_event_callback(event_callback(event), ME))["bot_id"] == "B0OTHER"


def test_join_leave_reaction_mention_and_generic_events():
    join = {"type": "member_joined_channel", "user": HUMAN, "channel": "C1", "channel_type": "C",
            "team": TEAM, "inviter": "U0INV", "event_ts": "2.0"}
    msg = emitted(protocol.translate_event_callback(event_callback(join), ME))
    assert (msg["type"], msg["user"], msg["channel"], msg["inviter"]) == ("slack.join", HUMAN, "C1", "U0INV")
    leave = {**join, "type": "member_left_channel"}
    leave.pop("inviter")
    assert emitted(protocol.translate_event_callback(event_callback(leave), ME))["type"] == "slack.leave"
    reaction = {"type": "reaction_removed", "user": HUMAN, "reaction": "tada", "item_user": "U2",
                "item": {"type": "message", "channel": "C9", "ts": "3.3"}, "event_ts": "3.4"}
    msg = emitted(protocol.translate_event_callback(event_callback(reaction), ME))
    assert (msg["type"], msg["channel"], msg["ts"], msg["reaction"]) == ("slack.reaction_removed", "C9", "3.3", "tada")
    mention = {"type": "app_mention", "user": HUMAN, "text": "<@U0BOT> hi", "ts": "4.4", "channel": "C1",
               "event_ts": "4.4"}
    msg = emitted(protocol.translate_event_callback(event_callback(mention), ME))
    assert (msg["type"], msg["text"]) == ("slack.app_mention", "<@U0BOT> hi")
    created = {"type": "channel_created", "channel": {"id": "C7", "name": "new", "creator": HUMAN},
               "event_ts": "5.5"}
    msg = emitted(protocol.translate_event_callback(event_callback(created), ME))
    assert (msg["type"], msg["event_type"], msg["channel"]) == ("slack.event", "channel_created", "C7")


def test_malformed_event_bodies_are_ignored_with_a_reason():
    assert isinstance(protocol.translate_event_callback({"type": "url_verification"}, ME), Ignored)
    assert isinstance(protocol.translate_event_callback({"type": "event_callback", "event": "x"}, ME), Ignored)
    assert isinstance(protocol.translate_envelope({"type": "events_api", "envelope_id": "e"}, ME), Ignored)
    assert isinstance(protocol.translate_envelope({"type": "hello"}, ME), Ignored)


def test_socket_mode_envelopes():
    body = event_callback(message_event("C1", "hi"), event_id="Ev9")
    inbound = protocol.translate_envelope(
        {"type": "events_api", "envelope_id": "e1", "payload": body, "retry_attempt": 2}, ME)
    assert emitted(inbound)["retry_attempt"] == 2 and inbound.dedup_key == "Ev9"

    inbound = protocol.translate_envelope(
        {"type": "slash_commands", "envelope_id": "e2", "payload": command_payload("/echo", "a b", "C1")}, ME)
    msg = emitted(inbound)
    assert (msg["type"], msg["id"], msg["command"], msg["text"], msg["ack_channel"]) == (
        "slack.command", "e2", "/echo", "a b", "specific.x!ack")
    assert "token" not in msg["event"] and inbound.dedup_key is None

    payload = block_actions_payload("C1", "pick", "blue", "https://hooks.example/r")
    msg = emitted(protocol.translate_envelope({"type": "interactive", "envelope_id": "e3", "payload": payload}, ME))
    assert (msg["type"], msg["kind"], msg["actions"][0]["value"], msg["response_url"]) == (
        "slack.action", "block_actions", "blue", "https://hooks.example/r")
    assert "ack_channel" not in msg

    values = {"note": {"input": {"type": "plain_text_input", "value": "x"}}}
    msg = emitted(protocol.translate_envelope(
        {"type": "interactive", "envelope_id": "e4", "payload": view_submission_payload("cb", values)}, ME))
    assert (msg["type"], msg["callback_id"], msg["values"]) == ("slack.view_submission", "cb", values)

    suggestion = {"type": "block_suggestion", "user": {"id": HUMAN}, "team": {"id": TEAM}, "action_id": "a",
                  "block_id": "b", "value": "fo", "channel": {"id": "C1"}}
    msg = emitted(protocol.translate_envelope({"type": "interactive", "envelope_id": "e5", "payload": suggestion}, ME))
    assert (msg["type"], msg["text"], msg["action_id"]) == ("slack.options", "fo", "a")


def test_ack_frame():
    assert protocol.ack_frame("e1") == {"envelope_id": "e1"}
    assert protocol.ack_frame("e1", {"text": "x"}) == {"envelope_id": "e1", "payload": {"text": "x"}}


def test_signatures():
    body, now = b'{"type":"event_callback"}', time.time()
    ts = str(int(now))
    good = protocol.sign("s3cret", ts, body)
    assert protocol.signature_problem("s3cret", body, ts, good, now, 300) is None
    assert "does not match" in protocol.signature_problem("s3cret", body + b" ", ts, good, now, 300)
    assert "does not match" in protocol.signature_problem("other", body, ts, good, now, 300)
    old = str(int(now) - 600)
    assert "replay" in protocol.signature_problem("s3cret", body, old, protocol.sign("s3cret", old, body), now, 300)
    assert "missing" in protocol.signature_problem("s3cret", body, None, good, now, 300)
    assert "not an integer" in protocol.signature_problem("s3cret", body, "abc", good, now, 300)


def test_routing_by_type_channel_text_and_command():
    routes = [
        SimpleNamespace(channel="a", types=["slack.message"], slack_channels=["C1"], text=r"^deploy", commands=[]),
        SimpleNamespace(channel="b", types=["slack.command"], slack_channels=[], text=None, commands=["/x"]),
        SimpleNamespace(channel="c", types=[], slack_channels=[], text="help", commands=[]),
    ]
    rules = protocol.compile_rules(routes)
    assert protocol.route({"type": "slack.message", "channel": "C1", "text": "deploy it"}, rules, "d") == "a"
    assert protocol.route({"type": "slack.message", "channel": "C2", "text": "deploy it"}, rules, "d") == "d"
    assert protocol.route({"type": "slack.command", "command": "/x", "text": ""}, rules, None) == "b"
    assert protocol.route({"type": "slack.command", "command": "/y", "text": "help"}, rules, None) == "c"
    assert protocol.route({"type": "slack.join", "text": None}, rules, None) is None


@pytest.mark.parametrize("send, method, params", [
    ({"action": "post", "channel": "C1", "text": "hi", "thread_ts": "1.1"}, "chat.postMessage",
     {"channel": "C1", "text": "hi", "thread_ts": "1.1"}),
    ({"action": "post", "channel": "C1", "blocks": [{"type": "divider"}], "params": {"unfurl_links": False}},
     "chat.postMessage", {"channel": "C1", "blocks": [{"type": "divider"}], "unfurl_links": False}),
    ({"action": "ephemeral", "channel": "C1", "user": "U1", "text": "psst"}, "chat.postEphemeral",
     {"channel": "C1", "user": "U1", "text": "psst"}),
    ({"action": "update", "channel": "C1", "ts": "1.1", "text": "v2"}, "chat.update",
     {"channel": "C1", "ts": "1.1", "text": "v2"}),
    ({"action": "delete", "channel": "C1", "ts": "1.1"}, "chat.delete", {"channel": "C1", "ts": "1.1"}),
    ({"action": "react", "channel": "C1", "ts": "1.1", "name": ":tada:"}, "reactions.add",
     {"channel": "C1", "timestamp": "1.1", "name": "tada"}),
    ({"action": "unreact", "channel": "C1", "ts": "1.1", "name": "tada"}, "reactions.remove",
     {"channel": "C1", "timestamp": "1.1", "name": "tada"}),
    ({"action": "call", "method": "conversations.info", "params": {"channel": "C1"}}, "conversations.info",
     {"channel": "C1"}),
])
def test_send_actions_become_web_api_calls(send, method, params):
    message = {"type": "slack.send", **send}
    SCHEMA.validate(message)
    call = protocol.build_call(message)
    assert (call.method, call.params, call.url) == (method, params, None)


def test_respond_posts_to_the_response_url():
    message = {"type": "slack.send", "action": "respond", "response_url": "https://hooks.example/x",
               "text": "done", "replace_original": True}
    call = protocol.build_call(message)
    assert (call.method, call.url, call.params) == (
        "response_url", "https://hooks.example/x", {"text": "done", "replace_original": True})


@pytest.mark.parametrize("send, problem", [
    ({"action": "post", "text": "no channel"}, "needs channel"),
    ({"action": "post", "channel": "C1"}, "needs text or blocks"),
    ({"action": "ephemeral", "channel": "C1", "text": "x"}, "needs user"),
    ({"action": "react", "channel": "C1", "name": "x"}, "needs ts"),
    ({"action": "call"}, "needs method"),
    ({"action": "respond", "text": "x"}, "needs response_url"),
])
def test_incomplete_sends_are_refused(send, problem):
    with pytest.raises(InvalidMessage, match=problem):
        protocol.build_call({"type": "slack.send", **send})


@pytest.mark.parametrize("bad", [
    {"type": "slack.send", "action": "shout", "channel": "C1"},
    {"type": "slack.send", "channel": "C1", "text": "no action"},
    {"type": "slack.send", "action": "post", "channel": "C1", "text": b"bytes"},
    {"type": "slack.send", "action": "call", "method": "../etc"},
    {"type": "slack.ack", "payload": "not a dict"},
])
def test_the_schema_refuses_bad_consumer_messages(bad):
    assert SCHEMA.problem(bad) is not None


def test_result_message_is_valid():
    request = {"type": "slack.send", "action": "post", "id": "r1"}
    SCHEMA.validate(protocol.result_message(request, True, {"ok": True, "ts": "1.1"}, None))
    result = protocol.result_message(request, False, {"ok": False, "error": "channel_not_found"},
                                     "channel_not_found")
    SCHEMA.validate(result)
    assert (result["id"], result["ok"], result["error"]) == ("r1", False, "channel_not_found")


@pytest.mark.parametrize("request_", [{"type": "slack.send", "id": 7, "action": ["post"]}, {"type": "slack.send"},
                                      "not a mapping", None])
def test_result_message_of_a_malformed_request_leaves_out_what_is_not_text(request_):
    result = protocol.result_message(request_, False, None, "invalid slack.send")
    SCHEMA.validate(result)
    assert (result["id"], result["action"]) == (None, None)


def test_odd_interactive_payloads_still_translate_to_valid_messages():
    odd = {"type": "shortcut", "team": "T1", "user": None, "channel": ["x"], "callback_id": 5,
           "message": "not a dict", "actions": "none"}
    msg = emitted(protocol.translate_interactive(odd, "m1"))
    assert (msg["team"], msg["user"], msg["channel"], msg["callback_id"], msg["actions"]) == (
        None, None, None, None, [])
    view = {"type": "view_submission", "view": {"state": "broken"}}
    assert emitted(protocol.translate_interactive(view, "m2"))["values"] == {}


def test_odd_event_fields_become_none_and_stay_in_event():
    odd = {"type": "reaction_added", "user": 7, "reaction": None, "item": "x", "event_ts": 1}
    msg = emitted(protocol.translate_event_callback(event_callback(odd), ME))
    assert (msg["user"], msg["reaction"], msg["item"], msg["channel"]) == (None, "", {}, None)
    assert msg["event"]["user"] == 7
    weird = message_event("C1", "hi", subtype=5, channel_type=["x"])
    msg = emitted(protocol.translate_event_callback(event_callback(weird), ME))
    assert (msg["subtype"], msg["channel_type"]) == (None, None)
