"""The Django side without a gateway: parsed mail, routing, replies, acks, RFC 3834."""

from __future__ import annotations

import pytest

from consumers.testing import EmailCommunicator, email_receive
from gateways.core.specs import load_schema

SCHEMA = load_schema("email")

PLAIN = (b"From: You <you@example.test>\nTo: echo@demo.local\nSubject: hello there\n"
         b"Message-ID: <q1@example.test>\nReferences: <q0@example.test>\n\nline one\nline two\n")


@pytest.fixture
def consumer_module(django_demo):
    from consumers import email as module

    return module


def test_email_receive_matches_the_schema(consumer_module):
    message = email_receive(PLAIN, mail_from="you@example.test", rcpt_to=["echo@demo.local"])
    assert SCHEMA.problem(message) is None
    assert message["raw"].count(b"\r\n") == PLAIN.count(b"\n")
    mail = consumer_module.Mail(message)
    assert mail.subject == "hello there" and mail.text == "line one\nline two\n"
    assert mail.envelope_from == "you@example.test" and mail.from_address == "you@example.test"


def test_build_reply_is_threaded(consumer_module):
    mail = consumer_module.Mail(email_receive(
        PLAIN, mail_from="bounce+x@example.test", rcpt_to=["echo@demo.local"]))
    reply = consumer_module.build_reply(mail, text="hi", auto=True)
    assert SCHEMA.problem(reply) is None
    assert reply["to"] == ["bounce+x@example.test"]  # the envelope sender, not From
    assert reply["from"] == "echo@demo.local"
    assert reply["subject"] == "Re: hello there"
    assert reply["in_reply_to"] == "<q1@example.test>"
    assert reply["references"] == ["<q0@example.test>", "<q1@example.test>"]
    assert ["Auto-Submitted", "auto-replied"] in reply["headers"]
    assert consumer_module.reply_subject("RE: x") == "RE: x"


@pytest.mark.parametrize("headers,mail_from,allowed", [
    (b"", "you@example.test", True),
    (b"", "", False),
    (b"Auto-Submitted: auto-replied\n", "you@example.test", False),
    (b"Auto-Submitted: auto-generated\n", "you@example.test", False),
    (b"Auto-Submitted: no\n", "you@example.test", True),
    (b"Precedence: bulk\n", "you@example.test", False),
    (b"Precedence: list\n", "you@example.test", False),
    (b"List-Id: <news.example.test>\n", "you@example.test", False),
    (b"X-Auto-Response-Suppress: All\n", "you@example.test", False),
    (b"", "MAILER-DAEMON@example.test", False),
    (b"", "list-request@example.test", False),
    (b"", "echo@demo.local", False),
])
def test_rfc3834_auto_reply_rules(consumer_module, headers, mail_from, allowed):
    raw = b"From: x@example.test\nSubject: s\n" + headers + b"\nbody\n"
    mail = consumer_module.Mail(email_receive(raw, mail_from=mail_from,
                                                                   rcpt_to=["echo@demo.local"]))
    assert mail.auto_reply_allowed() is allowed


def test_routes_capture_groups(consumer_module):
    route = consumer_module.route
    mail = consumer_module.Mail(email_receive(
        b"Subject: Ticket #77 broken\n\nx\n", rcpt_to=["support+eu@demo.local", "x@demo.local"]))
    assert route("h", address=r"support\+(?P<region>\w+)@demo\.local").match(mail) == {"region": "eu"}
    assert route("h", domain=r"(?P<d>demo)\.local", subject=r"#(?P<n>\d+)").match(mail) == {"d": "demo", "n": "77"}
    assert route("h", subject=r"^nope").match(mail) is None
    assert route("h", address=r"other@demo\.local").match(mail) is None


async def test_demo_echo_consumer_replies_and_acks(consumer_module):
    from demo.email_consumers import DemoMailConsumer

    async with EmailCommunicator(DemoMailConsumer) as mail:
        message = await mail.deliver(PLAIN, mail_from="you@example.test", rcpt_to=["echo@demo.local"])
        reply = await mail.receive_email()
        assert await mail.acked(message) and mail.acks == [message["id"]]
    assert SCHEMA.problem(reply) is None
    assert reply["to"] == ["you@example.test"] and reply["subject"] == "Re: hello there"
    assert reply["text"] == "line one\nline two\n"


async def test_demo_echo_consumer_never_answers_automatic_mail(consumer_module):
    from demo.email_consumers import DemoMailConsumer

    async with EmailCommunicator(DemoMailConsumer) as mail:
        for raw, sender in ((b"Auto-Submitted: auto-replied\n" + PLAIN, "you@example.test"), (PLAIN, "")):
            message = await mail.deliver(raw, mail_from=sender, rcpt_to=["echo@demo.local"])
            assert await mail.acked(message) and await mail.receive_nothing()


async def test_failing_handler_is_not_acked_and_duplicates_are_skipped(consumer_module):
    calls = []

    class Flaky(consumer_module.EmailConsumer):
        routes = [consumer_module.route("handle", subject="hello")]

        async def handle(self, context):
            calls.append(context.message["id"])
            if len(calls) == 1:
                raise RuntimeError("first try fails")

    async with EmailCommunicator(Flaky) as mail:
        message = await mail.deliver(PLAIN)
        with pytest.raises(RuntimeError, match="first try fails"):
            await mail.acked(message)
        assert not await mail.acked(message) and mail.stats["failed"] == 1
        await mail.redeliver(message)
        assert await mail.acked(message) and mail.stats["handled"] == 1
        mail.acks.clear()
        await mail.redeliver(message)  # a redelivery after a lost ack
        assert await mail.acked(message) and mail.stats["duplicates"] == 1
    assert calls == [message["id"], message["id"]]


async def test_unrouted_mail_is_logged_and_acked(consumer_module, caplog):
    class Nothing(consumer_module.EmailConsumer):
        routes = [consumer_module.route("never", address="nobody@demo.local")]

    async with EmailCommunicator(Nothing) as mail:
        message = await mail.deliver(PLAIN, rcpt_to=["x@demo.local"])
        assert await mail.acked(message)
    assert "no route for mail to x@demo.local" in caplog.text


async def test_acks_of_one_loop_iteration_go_as_one_message(consumer_module):
    import asyncio

    from channels.layers import InMemoryChannelLayer

    consumer = consumer_module.EmailConsumer()
    consumer.channel_layer = InMemoryChannelLayer()
    messages = [email_receive(PLAIN, id=f"m{n}.0", reply_channel="gw.acks!x") for n in range(5)]
    await asyncio.gather(*(consumer_module.EmailContext(consumer, m).ack() for m in messages))
    ack = await consumer.channel_layer.receive("gw.acks!x")
    assert SCHEMA.problem(ack) is None
    assert [ack["id"], *ack["ids"]] == [m["id"] for m in messages]
    await consumer_module.EmailContext(consumer, messages[0]).ack()  # alone: no ids
    assert await consumer.channel_layer.receive("gw.acks!x") == {"type": "email.ack", "id": "m0.0"}


async def test_a_failed_batched_ack_reaches_every_handler(consumer_module):
    import asyncio

    from channels.layers import InMemoryChannelLayer

    class Down(InMemoryChannelLayer):
        async def send(self, channel, message):
            raise ConnectionError("layer down")

    consumer = consumer_module.EmailConsumer()
    consumer.channel_layer = Down()
    messages = [email_receive(PLAIN, id=f"m{n}.0", reply_channel="gw.acks!x") for n in range(3)]
    results = await asyncio.gather(*(consumer_module.EmailContext(consumer, m).ack() for m in messages),
                                   return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
