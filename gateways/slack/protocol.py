"""Pure translation between Slack's wire formats and ``slack.*`` messages.

No I/O here: functions take Slack's JSON (Socket Mode envelopes, Events API
bodies, slash-command forms, interactive payloads) as plain data and return
channel messages, and turn ``slack.send`` messages into Web API calls. The
spec is ``protocol_specs/slack.md``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from gateways.core.specs import InvalidMessage

#: Inbound types whose Slack ack may carry a payload the consumer chooses.
ACK_PAYLOAD_TYPES = frozenset({"slack.command", "slack.view_submission", "slack.options"})

#: Events API ``event.type`` -> message type; everything else is ``slack.event``.
EVENT_TYPES = {
    "message": "slack.message",
    "app_mention": "slack.app_mention",
    "member_joined_channel": "slack.join",
    "member_left_channel": "slack.leave",
    "reaction_added": "slack.reaction_added",
    "reaction_removed": "slack.reaction_removed",
}


@dataclass(frozen=True)
class Identity:
    """Who the bot is, from ``auth.test``, so its own messages can be ignored.

    Args:
        user_id: the bot user's id (``U...``).
        bot_id: the bot's id (``B...``).
        team_id: the workspace id.
    """

    user_id: str | None
    bot_id: str | None
    team_id: str | None = None

    @classmethod
    def from_auth_test(cls, response: dict[str, Any]) -> "Identity":
        """Build from an ``auth.test`` response body."""
        return cls(response.get("user_id"), response.get("bot_id"), response.get("team_id"))


@dataclass
class Inbound:
    """A Slack delivery translated into one channel message.

    Args:
        message: the ``slack.*`` message (without ``reply_channel``/``ack_channel``).
        dedup_key: the event id retries share, or None when Slack never retries it.
        order_key: the Slack conversation (team/channel) whose hand-offs keep order.
    """

    message: dict[str, Any]
    dedup_key: str | None = None
    order_key: str | None = None

    @property
    def wants_ack_payload(self) -> bool:
        """Whether Slack accepts a payload in this delivery's ack."""
        return self.message["type"] in ACK_PAYLOAD_TYPES


@dataclass
class Ignored:
    """A delivery that produces no message, and why (for logs and metrics)."""

    reason: str


@dataclass
class ApiCall:
    """One outbound HTTP call: a Web API method, or a POST to a response_url.

    Args:
        method: the Web API method (``chat.postMessage``), or ``response_url``.
        params: the JSON body.
        url: the full URL for a response_url post; None for Web API methods.
    """

    method: str
    params: dict[str, Any] = field(default_factory=dict)
    url: str | None = None


# --------------------------------------------------------------------------
# Request signatures (Events API over HTTP).


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Slack-Signature`` value of ``body`` sent at ``timestamp``."""
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def signature_problem(
    secret: str, body: bytes, timestamp: str | None, signature: str | None, now: float, window: float
) -> str | None:
    """Why a request's signature is not acceptable, or None when it is.

    Args:
        secret: the app's signing secret.
        body: the raw request body.
        timestamp: the ``X-Slack-Request-Timestamp`` header.
        signature: the ``X-Slack-Signature`` header.
        now: the current Unix time.
        window: seconds the timestamp may differ from ``now``.
    """
    if not timestamp or not signature:
        return "missing X-Slack-Request-Timestamp or X-Slack-Signature"
    try:
        sent = int(timestamp)
    except ValueError:
        return f"timestamp {timestamp!r} is not an integer"
    if abs(now - sent) > window:
        return f"timestamp is {int(now - sent)}s from now (window {int(window)}s): possible replay"
    if not hmac.compare_digest(sign(secret, timestamp, body), signature):
        return "signature does not match"
    return None


# --------------------------------------------------------------------------
# Inbound.


def _base(mtype: str, mid: str, team: Any, channel: Any, user: Any, text: Any, ts: Any,
          thread_ts: Any, original: dict[str, Any], retry_attempt: int) -> dict[str, Any]:
    # Slack's documented fields are strings; anything else is left in ``event``.
    return {
        "type": mtype,
        "id": mid,
        "team": _str(team),
        "channel": _str(channel),
        "user": _str(user),
        "text": _str(text),
        "ts": _str(ts),
        "thread_ts": _str(thread_ts),
        "event": original,
        "retry_attempt": retry_attempt,
    }


def _order_key(team: Any, channel: Any) -> str | None:
    return f"{team or ''}/{channel}" if channel else None


def _own(identity: Identity | None, user: Any, bot_id: Any) -> bool:
    if identity is None:
        return False
    return bool((user and user == identity.user_id) or (bot_id and bot_id == identity.bot_id))


def translate_event_callback(
    body: dict[str, Any], identity: Identity | None, retry_attempt: int = 0
) -> Inbound | Ignored:
    """An Events API ``event_callback`` body (HTTP, or a Socket Mode ``events_api``
    payload) as a message.

    Args:
        body: the outer body with ``team_id``, ``event_id`` and ``event``.
        identity: the bot, whose own messages and reactions are ignored.
        retry_attempt: Slack's retry counter for this delivery.
    """
    if body.get("type") != "event_callback":
        return Ignored(f"body type {body.get('type')!r} is not event_callback")
    event = body.get("event")
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        return Ignored("event_callback without an event type")
    event_id = body.get("event_id")
    dedup = event_id if isinstance(event_id, str) and event_id else None
    callback = _Callback(dedup or uuid.uuid4().hex, body.get("team_id") or event.get("team"), identity,
                         retry_attempt, dedup)
    mtype = EVENT_TYPES.get(event["type"], "slack.event")
    return _EVENT_TRANSLATORS.get(mtype, _other_event)(mtype, event, callback)


@dataclass(frozen=True)
class _Callback:
    """What an ``event_callback`` body says around its event.

    Args:
        mid: the message id (the event id; a fresh one without).
        team: the workspace.
        identity: the bot, whose own messages and reactions are ignored.
        retry_attempt: Slack's retry counter for this delivery.
        dedup: the event id retries share, or None.
    """

    mid: str
    team: Any
    identity: Identity | None
    retry_attempt: int
    dedup: str | None

    def base(self, mtype: str, event: dict[str, Any], channel: Any, user: Any, text: Any, ts: Any,
             thread_ts: Any) -> dict[str, Any]:
        """The keys every message of this event has."""
        return _base(mtype, self.mid, self.team, channel, user, text, ts, thread_ts, event, self.retry_attempt)

    def inbound(self, message: dict[str, Any], channel: Any) -> Inbound:
        """``message``, deduplicated by the event id and ordered in ``channel``."""
        return Inbound(message, self.dedup, _order_key(self.team, channel))


def _message_event(mtype: str, event: dict[str, Any], callback: _Callback) -> Inbound | Ignored:
    """``message`` (and its edits and deletes) as ``slack.message``."""
    subtype = event.get("subtype")
    # Edits and deletes describe another message: the author and text are the inner ones.
    inner = event.get("message") if subtype == "message_changed" else None
    if subtype == "message_deleted":
        inner = event.get("previous_message")
    inner = inner if isinstance(inner, dict) else {}
    user = inner.get("user", event.get("user"))
    bot_id = inner.get("bot_id", event.get("bot_id"))
    if _own(callback.identity, user, bot_id):
        return Ignored("the bot's own message")
    text = inner.get("text", event.get("text"))
    if subtype == "message_deleted":
        ts = event.get("deleted_ts") or inner.get("ts")
    else:
        ts = inner.get("ts", event.get("ts"))
    message = callback.base(mtype, event, event.get("channel"), user, text, ts,
                            inner.get("thread_ts", event.get("thread_ts")))
    message["subtype"] = _str(subtype)
    message["bot_id"] = _str(bot_id)
    message["channel_type"] = _str(event.get("channel_type"))
    return callback.inbound(message, event.get("channel"))


def _mention_event(mtype: str, event: dict[str, Any], callback: _Callback) -> Inbound | Ignored:
    """``app_mention`` as ``slack.app_mention``."""
    if _own(callback.identity, event.get("user"), event.get("bot_id")):
        return Ignored("the bot's own mention")
    message = callback.base(mtype, event, event.get("channel"), event.get("user"), event.get("text"),
                            event.get("ts"), event.get("thread_ts"))
    return callback.inbound(message, message["channel"])


def _membership_event(mtype: str, event: dict[str, Any], callback: _Callback) -> Inbound:
    """``member_joined_channel``/``member_left_channel`` as ``slack.join``/``slack.leave``."""
    message = callback.base(mtype, event, event.get("channel"), event.get("user"), None, event.get("event_ts"),
                            None)
    message["inviter"] = _str(event.get("inviter"))
    message["channel_type"] = _str(event.get("channel_type"))
    return callback.inbound(message, message["channel"])


def _reaction_event(mtype: str, event: dict[str, Any], callback: _Callback) -> Inbound | Ignored:
    """``reaction_added``/``reaction_removed``: in the channel of the item reacted to."""
    if _own(callback.identity, event.get("user"), None):
        return Ignored("the bot's own reaction")
    item = _dict(event.get("item"))
    message = callback.base(mtype, event, item.get("channel"), event.get("user"), None, item.get("ts"), None)
    message["reaction"] = _str(event.get("reaction")) or ""
    message["item_user"] = _str(event.get("item_user"))
    message["item"] = item
    return callback.inbound(message, message["channel"])


def _other_event(mtype: str, event: dict[str, Any], callback: _Callback) -> Inbound:
    """Any other event as ``slack.event``, with the common keys it happens to carry."""
    channel = event.get("channel")
    if isinstance(channel, dict):  # channel_created and friends carry an object
        channel = channel.get("id")
    message = callback.base(mtype, event, *(_str(v) for v in (channel, event.get("user"), event.get("text"),
                                                                event.get("ts"), event.get("thread_ts"))))
    message["event_type"] = event["type"]
    return callback.inbound(message, message["channel"])


#: Message type -> how its events are translated (the rest: :func:`_other_event`).
_EVENT_TRANSLATORS: dict[str, Callable[[str, dict[str, Any], _Callback], Inbound | Ignored]] = {
    "slack.message": _message_event,
    "slack.app_mention": _mention_event,
    "slack.join": _membership_event,
    "slack.leave": _membership_event,
    "slack.reaction_added": _reaction_event,
    "slack.reaction_removed": _reaction_event,
}


def translate_command(form: dict[str, Any], mid: str) -> Inbound | Ignored:
    """A slash command's form fields as a ``slack.command`` message.

    Args:
        form: the decoded form (Socket Mode's ``slash_commands`` payload is the same).
        mid: the message id (the envelope id, or a fresh one over HTTP).
    """
    command = form.get("command")
    if not isinstance(command, str) or not command:
        return Ignored("slash command without a command")
    form = {k: v for k, v in form.items() if k != "token"}  # the legacy verification token stays here
    message = _base("slack.command", mid, form.get("team_id"), form.get("channel_id"), form.get("user_id"),
                    form.get("text", ""), None, None, form, 0)
    message["command"] = command
    message["response_url"] = _str(form.get("response_url"))
    message["trigger_id"] = _str(form.get("trigger_id"))
    return Inbound(message, None, _order_key(form.get("team_id"), form.get("channel_id")))


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _id(value: Any) -> str | None:
    """The ``id`` of one of Slack's objects (team, user, channel), or None."""
    return _str(value.get("id")) if isinstance(value, dict) else None


def translate_interactive(payload: dict[str, Any], mid: str) -> Inbound | Ignored:
    """An interactive payload (block actions, view submissions, shortcuts,
    options requests) as a message.

    Args:
        payload: the decoded ``payload`` JSON.
        mid: the message id.
    """
    kind = payload.get("type")
    if not isinstance(kind, str):
        return Ignored("interactive payload without a type")
    payload = {k: v for k, v in payload.items() if k != "token"}
    team, user, channel = _id(payload.get("team")), _id(payload.get("user")), _id(payload.get("channel"))
    container = _dict(payload.get("container"))
    msg = _dict(payload.get("message"))
    ts = _str(container.get("message_ts")) or _str(msg.get("ts"))
    thread_ts = _str(msg.get("thread_ts"))
    text = None
    if kind == "view_submission":
        mtype = "slack.view_submission"
    elif kind == "block_suggestion":
        mtype = "slack.options"
        text = _str(payload.get("value"))
    else:
        mtype = "slack.action"
    message = _base(mtype, mid, team, channel, user, text, ts, thread_ts, payload, 0)
    message["kind"] = kind
    message["response_url"] = _str(payload.get("response_url"))
    message["trigger_id"] = _str(payload.get("trigger_id"))
    if mtype == "slack.action":
        actions = payload.get("actions")
        message["actions"] = actions if isinstance(actions, list) else []
        if kind in ("shortcut", "message_action"):
            message["callback_id"] = _str(payload.get("callback_id"))
    elif mtype == "slack.view_submission":
        view = _dict(payload.get("view"))
        message["view"] = view
        message["callback_id"] = _str(view.get("callback_id"))
        message["values"] = _dict(_dict(view.get("state")).get("values"))
    else:
        message["action_id"] = _str(payload.get("action_id"))
        message["block_id"] = _str(payload.get("block_id"))
    return Inbound(message, None, _order_key(team, channel))


def translate_envelope(envelope: dict[str, Any], identity: Identity | None) -> Inbound | Ignored:
    """A Socket Mode envelope (``events_api``, ``slash_commands``, ``interactive``)
    as a message.

    Args:
        envelope: the decoded WebSocket frame.
        identity: the bot, whose own events are ignored.
    """
    etype = envelope.get("type")
    payload = envelope.get("payload")
    if not isinstance(payload, dict):
        return Ignored(f"{etype} envelope without a payload")
    envelope_id = envelope.get("envelope_id") or uuid.uuid4().hex
    if etype == "events_api":
        attempt = envelope.get("retry_attempt")
        return translate_event_callback(payload, identity, attempt if isinstance(attempt, int) else 0)
    if etype == "slash_commands":
        return translate_command(payload, envelope_id)
    if etype == "interactive":
        return translate_interactive(payload, envelope_id)
    return Ignored(f"envelope type {etype!r} carries no event")


def ack_frame(envelope_id: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Socket Mode acknowledgement of ``envelope_id``, with an optional payload."""
    frame: dict[str, Any] = {"envelope_id": envelope_id}
    if payload:
        frame["payload"] = payload
    return frame


# --------------------------------------------------------------------------
# Routing.


@dataclass(frozen=True)
class Rule:
    """A compiled routing rule (from ``slack.routes``).

    Args:
        channel: the channel-layer channel.
        types: message types, empty for any.
        slack_channels: Slack channel ids, empty for any.
        text: compiled text pattern, or None.
        commands: slash commands, empty for any.
    """

    channel: str
    types: frozenset[str] = frozenset()
    slack_channels: frozenset[str] = frozenset()
    text: re.Pattern[str] | None = None
    commands: frozenset[str] = frozenset()

    def matches(self, message: dict[str, Any]) -> bool:
        """Whether ``message`` satisfies every condition of this rule."""
        if self.types and message["type"] not in self.types:
            return False
        if self.slack_channels and message.get("channel") not in self.slack_channels:
            return False
        if self.commands and message.get("command") not in self.commands:
            return False
        if self.text is not None:
            text = message.get("text")
            if not isinstance(text, str) or not self.text.search(text):
                return False
        return True


def compile_rules(routes: Iterable[Any]) -> list[Rule]:
    """Rules from route configs (objects with channel/types/slack_channels/text/commands)."""
    return [
        Rule(r.channel, frozenset(r.types), frozenset(r.slack_channels),
             re.compile(r.text) if r.text is not None else None, frozenset(r.commands))
        for r in routes
    ]


def route(message: dict[str, Any], rules: list[Rule], default: str | None) -> str | None:
    """The channel for ``message``: the first matching rule's, else ``default``."""
    for rule in rules:
        if rule.matches(message):
            return rule.channel
    return default


# --------------------------------------------------------------------------
# Outbound.


def _pick(message: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: message[k] for k in keys if message.get(k) is not None}


def _require(message: dict[str, Any], action: str, *keys: str) -> None:
    missing = [k for k in keys if message.get(k) in (None, "")]
    if missing:
        raise InvalidMessage(f"action {action!r} needs {', '.join(missing)}")


def build_call(message: dict[str, Any]) -> ApiCall:
    """The HTTP call a valid ``slack.send`` message asks for.

    Raises :class:`InvalidMessage` when a key the action needs is missing.
    """
    action = message["action"]
    extra = dict(message.get("params") or {})
    if action in ("post", "ephemeral"):
        _require(message, action, "channel")
        if not message.get("text") and not message.get("blocks") and "attachments" not in extra:
            raise InvalidMessage(f"action {action!r} needs text or blocks")
        params = _pick(message, "channel", "text", "blocks", "thread_ts")
        if action == "ephemeral":
            _require(message, action, "user")
            params["user"] = message["user"]
            return ApiCall("chat.postEphemeral", {**params, **extra})
        if message.get("reply_broadcast"):
            params["reply_broadcast"] = True
        return ApiCall("chat.postMessage", {**params, **extra})
    if action == "update":
        _require(message, action, "channel", "ts")
        return ApiCall("chat.update", {**_pick(message, "channel", "ts", "text", "blocks"), **extra})
    if action == "delete":
        _require(message, action, "channel", "ts")
        return ApiCall("chat.delete", {**_pick(message, "channel", "ts"), **extra})
    if action in ("react", "unreact"):
        _require(message, action, "channel", "ts", "name")
        method = "reactions.add" if action == "react" else "reactions.remove"
        params = {"channel": message["channel"], "timestamp": message["ts"], "name": message["name"].strip(":")}
        return ApiCall(method, {**params, **extra})
    if action == "respond":
        _require(message, action, "response_url")
        body = _pick(message, "text", "blocks", "response_type", "thread_ts")
        for flag in ("replace_original", "delete_original"):
            if message.get(flag) is not None:
                body[flag] = message[flag]
        return ApiCall("response_url", {**body, **extra}, url=message["response_url"])
    if action == "call":
        _require(message, action, "method")
        return ApiCall(message["method"], extra)
    raise InvalidMessage(f"unknown action {action!r}")  # the schema's enum makes this unreachable


def result_message(request: dict[str, Any], ok: bool, response: dict[str, Any] | None,
                   error: str | None) -> dict[str, Any]:
    """The ``slack.result`` for a ``slack.send`` (sent to its ``reply_channel``).

    Args:
        request: the ``slack.send`` message.
        ok: whether Slack accepted the call.
        response: Slack's JSON body (None when there was none).
        error: Slack's ``error`` field or the gateway's reason.
    """
    fields = _dict(request)
    return {
        "type": "slack.result",
        "id": _str(fields.get("id")),
        "action": _str(fields.get("action")),
        "ok": ok,
        "error": error,
        "response": response,
    }
