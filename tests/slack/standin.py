"""The Slack stand-in for the tests: ``consumers.testing.slack_standin`` (the
command developers run), plus signed Events API posts, which use the gateway's
own signing (consumers may not import a gateway)."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlencode

from consumers.testing.slack_standin import (BOT_ID, BOT_USER, HUMAN, INJECTORS, TEAM, Ack, Call,
                                             SlackStandIn, block_actions_payload, command_payload, event_callback,
                                             message_event, view_submission_payload)
from gateways.slack.protocol import sign

__all__ = ["BOT_ID", "BOT_USER", "HUMAN", "INJECTORS", "TEAM", "Ack", "Call", "SlackStandIn", "block_actions_payload",
           "command_payload", "event_callback", "form_body", "message_event", "post_signed", "view_submission_payload"]


def post_signed(url: str, body: bytes, secret: str, content_type: str = "application/json",
                timestamp: str | None = None, signature: str | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """POST ``body`` to an app's Events API URL signed the way Slack signs it.

    ``timestamp``/``signature`` override the correct values, to send bad ones.
    Returns (status, body).
    """
    timestamp = timestamp if timestamp is not None else str(int(time.time()))
    signature = signature if signature is not None else sign(secret, timestamp, body)
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": content_type, "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": signature, "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
        **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def form_body(fields: dict[str, Any]) -> bytes:
    """A form-encoded body, as Slack posts slash commands and interactivity."""
    return urlencode(fields).encode()
