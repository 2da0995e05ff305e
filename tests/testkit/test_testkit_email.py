"""EmailCommunicator and email_receive: mail in from a description or raw bytes,
email.send and acks out, results back."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import consumers.testing.email as kit
import protocol_specs.email
from consumers.email import EmailConsumer, route
from consumers.testing import EmailCommunicator, email_receive
from gateways.core.specs import load_schema
from protocol_specs.email import Delivery, Envelope, receive_message

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "email"))
from corpus import CORPUS  # noqa: E402

SCHEMA = load_schema("email")

MULTIPART = (b"From: =?utf-8?q?J=C3=B6rg?= <joerg@example.test>\nTo: a@demo.local, B <b@demo.local>\n"
             b"Cc: c@demo.local\nSubject: =?utf-8?b?R3LDvMOfZQ==?=\nMessage-ID: <m1@example.test>\n"
             b"In-Reply-To: <m0@example.test>\nReferences: <a@x>\n <m0@example.test>\n"
             b"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n"
             b"--b\nContent-Type: multipart/alternative; boundary=c\n\n"
             b"--c\nContent-Type: text/plain; charset=utf-8\n\nplain \xe2\x9c\x93\n"
             b"--c\nContent-Type: text/html\n\n<p>html</p>\n--c--\n"
             b"--b\nContent-Type: application/pdf; name=\"r.pdf\"\nContent-Disposition: attachment; "
             b"filename=\"r.pdf\"\nContent-Transfer-Encoding: base64\n\nJVBERi0=\n--b--\n")


def shared_build(message: dict) -> dict:
    """The same delivery built by the gateway's builder (protocol_specs.email), from its parts."""
    envelope = Envelope(message["envelope"]["mail_from"], message["envelope"]["rcpt_to"], peer="127.0.0.1:0",
                        helo="test", received_at=message["envelope"]["received_at"])
    return receive_message(message["raw"], envelope, id=message["id"], reply_channel=message["reply_channel"],
                           delivery=Delivery(message["channel"], message["recipients"], message["route_kwargs"]),
                           attempt=message["attempt"])


@pytest.mark.parametrize("raw", [None, MULTIPART, *CORPUS.values()], ids=["described", "multipart", *CORPUS])
def test_the_kit_message_is_the_gateway_builders(raw):
    if raw is None:
        message = email_receive(from_="Ann <ann@example.test>", to=["x@demo.local", "y@demo.local"],
                                subject="Grüße", body="hello\n", html="<p>hello</p>",
                                headers={"X-Extra": "1"})
    else:
        message = email_receive(raw, mail_from="bounce@example.test")
    assert SCHEMA.problem(message) is None
    assert message == shared_build(message)


def test_the_kit_has_no_builder_of_its_own():
    """The kit parses, composes and wraps deliveries with protocol_specs.email's functions, not copies."""
    for name in ("parse_message", "receive_message", "compose_message", "sent_message", "failed_message"):
        assert getattr(kit, name) is getattr(protocol_specs.email, name), name


def test_the_description_fills_envelope_and_recipients():
    message = email_receive(from_="ann@example.test", to="support@demo.local", subject="help", body="broken\n")
    assert message["envelope"]["mail_from"] == "ann@example.test"
    assert message["recipients"] == ["support@demo.local"] == message["envelope"]["rcpt_to"]
    assert (message["subject"], message["text"]) == ("help", "broken\n")
    assert email_receive(b"Subject: x\n\nbody\n", mail_from="", rcpt_to=["a@demo.local"])["envelope"]["mail_from"] == ""


class Support(EmailConsumer):
    routes = [route("ticket", address=r"support\+(?P<ticket>\d+)@demo\.local"), route("other", subject="(?i)help")]

    async def ticket(self, context):
        await context.reply(text=f"ticket {context.kwargs['ticket']}", auto=True)

    async def other(self, context):
        await context.send({"type": "email.send", "id": "out-1", "from": "support@demo.local",
                            "to": ["boss@demo.local"], "subject": "escalate", "text": context.mail.text,
                            "reply_channel": context.consumer.channel_name})

    async def email_sent(self, context):
        self.results.append(context.message)

    async def email_failed(self, context):
        self.results.append(context.message)


async def test_replies_acks_and_results():
    Support.results = []
    async with EmailCommunicator(Support, "email.support") as mail:
        first = await mail.deliver(from_="ann@example.test", to="support+42@demo.local", subject="printer")
        reply = await mail.receive_email()
        assert reply["to"] == ["ann@example.test"] and reply["text"] == "ticket 42"
        assert ["Auto-Submitted", "auto-replied"] in reply["headers"]
        assert await mail.acked(first)
        second = await mail.deliver(from_="bob@example.test", to="x@demo.local", subject="Help!", body="now\n")
        escalation = await mail.receive_email()
        assert escalation["subject"] == "escalate" and await mail.acked(second)
        sent = await mail.answer(escalation)
        failed = await mail.answer(escalation, ok=False)
        await mail.idle()
        assert await mail.receive_nothing()
    assert mail.acks == [first["id"], second["id"]]
    assert [r["type"] for r in Support.results] == ["email.sent", "email.failed"]
    assert Support.results == [sent, failed] and sent["id"] == "out-1"
