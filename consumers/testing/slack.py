"""Test a ``slack.*`` consumer: inject Slack events, read what it sends.

::

    async with SlackCommunicator(Bot, "slack.receive") as slack:
        await slack.message("deploy web", channel="C1")
        post = await slack.receive_send()                # a slack.send
        assert post["action"] == "post" and post["text"] == "deploying web"
        command = await slack.command("/deploy", "web")
        assert (await slack.receive_ack(command))["payload"] == {"text": "on it"}
"""

from __future__ import annotations

import uuid
from typing import Any

from consumers.testing.harness import GatewayCommunicator

__all__ = ["SlackCommunicator", "slack_event"]

#: The gateway's default outbound channel (what inbound messages name as ``reply_channel``).
SEND_CHANNEL = "slack.send"

#: Types that wait for a ``slack.ack`` on their ``ack_channel``.
ACKED_TYPES = ("slack.command", "slack.view_submission", "slack.options")

_EXTRA: dict[str, dict[str, Any]] = {
    "slack.message": {"subtype": None, "bot_id": None, "channel_type": "channel"},
    "slack.app_mention": {},
    "slack.join": {"inviter": None, "channel_type": "C"},
    "slack.leave": {"inviter": None, "channel_type": "C"},
    "slack.reaction_added": {"reaction": "thumbsup", "item_user": "U0TEST",
                             "item": {"type": "message", "channel": "C0TEST", "ts": "1700000000.000100"}},
    "slack.reaction_removed": {"reaction": "thumbsup", "item_user": "U0TEST",
                               "item": {"type": "message", "channel": "C0TEST", "ts": "1700000000.000100"}},
    "slack.command": {"command": "/test", "response_url": "https://hooks.slack.com/commands/x",
                      "trigger_id": "1.2.3", "text": ""},
    "slack.action": {"kind": "block_actions", "response_url": "https://hooks.slack.com/actions/x",
                     "trigger_id": "1.2.3", "actions": []},
    "slack.view_submission": {"kind": "view_submission", "response_url": None, "trigger_id": "1.2.3",
                              "view": {}, "callback_id": None, "values": {}},
    "slack.options": {"kind": "block_suggestion", "response_url": None, "trigger_id": None,
                      "action_id": None, "block_id": None},
    "slack.event": {"event_type": "unknown"},
}


def slack_event(mtype: str = "slack.message", **fields: Any) -> dict[str, Any]:
    """An inbound ``slack.*`` message with test defaults (team ``T0TEST``, channel
    ``C0TEST``, user ``U0TEST``); ``fields`` override any key.

    Commands, view submissions and options requests get an ``ack_channel``.

    Args:
        mtype: the message type (``slack.message``, ``slack.join``, ``slack.command``, ...).
        **fields: keys of the message (see ``protocol_specs/slack.md``).
    """
    if mtype not in _EXTRA:
        raise ValueError(f"{mtype!r} is not an inbound Slack message type ({', '.join(_EXTRA)})")
    message: dict[str, Any] = {
        "type": mtype, "id": uuid.uuid4().hex, "reply_channel": SEND_CHANNEL, "team": "T0TEST",
        "channel": "C0TEST", "user": "U0TEST", "text": None, "ts": "1700000000.000100", "thread_ts": None,
        "event": {}, "retry_attempt": 0, **_EXTRA[mtype],
    }
    if mtype in ACKED_TYPES:
        message["ack_channel"] = f"slack.ack.{uuid.uuid4().hex}"
    message.update(fields)
    return message


class SlackCommunicator(GatewayCommunicator):
    """A Slack gateway's side of a :class:`~consumers.slack.SlackConsumer`.

    Args:
        consumer: the consumer class, or a harness/communicator to share.
        channel: the channel the gateway's route sends to.
        send_channel: the gateway's outbound channel (``slack.send``).
        timeout: upper bound, in seconds, on every wait.
        raise_errors: see :class:`~consumers.testing.ConsumerHarness`.
    """

    default_channel = "slack.receive"
    default_send_channel = SEND_CHANNEL

    # -- events in ----------------------------------------------------------------

    async def event(self, mtype: str, **fields: Any) -> dict[str, Any]:
        """Deliver an inbound message of ``mtype`` (keys as in :func:`slack_event`); return it."""
        message = slack_event(mtype, reply_channel=self.send_channel, **fields)
        await self.harness.deliver(message)
        return message

    async def message(self, text: str, channel: str = "C0TEST", user: str = "U0TEST", **fields: Any) -> dict[str, Any]:
        """Someone posted ``text`` in ``channel`` (``slack.message``)."""
        fields.setdefault("ts", _ts())
        return await self.event("slack.message", text=text, channel=channel, user=user, **fields)

    async def mention(self, text: str, channel: str = "C0TEST", user: str = "U0TEST", **fields: Any) -> dict[str, Any]:
        """Someone mentioned the app (``slack.app_mention``)."""
        fields.setdefault("ts", _ts())
        return await self.event("slack.app_mention", text=text, channel=channel, user=user, **fields)

    async def join(self, channel: str = "C0TEST", user: str = "U0TEST", **fields: Any) -> dict[str, Any]:
        """``user`` joined ``channel`` (``slack.join``)."""
        return await self.event("slack.join", channel=channel, user=user, **fields)

    async def leave(self, channel: str = "C0TEST", user: str = "U0TEST", **fields: Any) -> dict[str, Any]:
        """``user`` left ``channel`` (``slack.leave``)."""
        return await self.event("slack.leave", channel=channel, user=user, **fields)

    async def reaction(self, name: str, ts: str, channel: str = "C0TEST", user: str = "U0TEST",
                       removed: bool = False, **fields: Any) -> dict[str, Any]:
        """``user`` added (or removed) reaction ``name`` to the message ``ts``."""
        fields.setdefault("item", {"type": "message", "channel": channel, "ts": ts})
        return await self.event("slack.reaction_removed" if removed else "slack.reaction_added",
                                reaction=name, ts=ts, channel=channel, user=user, **fields)

    async def command(self, command: str, text: str = "", channel: str = "C0TEST", user: str = "U0TEST",
                      **fields: Any) -> dict[str, Any]:
        """A slash command (``slack.command``); read its ack with :meth:`receive_ack`."""
        return await self.event("slack.command", command=command, text=text, channel=channel, user=user,
                                **fields)

    # -- what the consumer sends -------------------------------------------------------

    async def receive_send(self, timeout: float | None = None) -> dict[str, Any]:
        """The next ``slack.send`` the consumer sent to the gateway."""
        message = await self.harness.receive(self.send_channel, timeout=timeout)
        assert message["type"] == "slack.send", f"expected slack.send, got {message!r}"
        return message

    async def receive_ack(self, message: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """The ``slack.ack`` the consumer sent for ``message`` (a command, view submission or options)."""
        assert message.get("ack_channel"), f"{message['type']} has no ack_channel"
        return await self.harness.receive(message["ack_channel"], timeout=timeout)

    async def answer(self, send: dict[str, Any], ok: bool = True, response: dict[str, Any] | None = None,
                     error: str | None = None) -> dict[str, Any] | None:
        """Send the ``slack.result`` the gateway would send for ``send`` to its
        ``reply_channel`` (none when it names none); return it.

        Args:
            send: a ``slack.send`` the consumer sent.
            ok: whether Slack accepted it.
            response: Slack's JSON body (``{"ok": true, "ts": ...}`` by default when ok).
            error: Slack's error (``channel_not_found``, ...) when not ok.
        """
        reply_channel = send.get("reply_channel")
        if not reply_channel:
            return None
        if response is None and ok:
            response = {"ok": True, "channel": send.get("channel"), "ts": _ts()}
        result = {"type": "slack.result", "id": send.get("id"), "action": send.get("action"), "ok": ok,
                  "error": None if ok else (error or "error"), "response": response}
        await self.layer.send(reply_channel, result)
        return result


_counter = iter(range(1, 10**9))


def _ts() -> str:
    """A fresh Slack timestamp."""
    return f"1700000000.{next(_counter):06d}"
