"""The Django side without a gateway: SlackConsumer, routing, the test helpers
and the demo bot."""

from __future__ import annotations

import django
import pytest
from django.conf import settings

from consumers.slack import SlackConsumer, SlackContext, make_message, on, run_consumer
from gateways.core.specs import load_schema

SCHEMA = load_schema("slack")


@pytest.fixture(scope="module", autouse=True)
def django_settings():
    if not settings.configured:
        settings.configure(INSTALLED_APPS=[], DATABASES={})
        django.setup()


def sends(sent: list[dict]) -> list[dict]:
    """What was sent, without the helper's channel key, each checked against the schema."""
    out = []
    for message in sent:
        message = {k: v for k, v in message.items() if k != "__channel__"}
        SCHEMA.validate(message)
        out.append(message)
    return out


class Bot(SlackConsumer):
    @on("slack.message", text=r"^deploy (?P<target>\w+)")
    async def deploy(self, ctx: SlackContext) -> None:
        await ctx.reply_in_thread(f"deploying {ctx.match['target']}")

    @on("slack.command", command="/fail")
    async def fail(self, ctx: SlackContext) -> None:
        raise RuntimeError("boom")

    async def on_message(self, ctx: SlackContext) -> None:
        await ctx.say(f"heard {ctx.text}")

    def on_reaction(self, ctx: SlackContext) -> None:  # plain def: runs in a thread
        from asgiref.sync import async_to_sync

        async_to_sync(ctx.react)("eyes")

    async def on_command(self, ctx: SlackContext) -> None:
        if ctx.text == "answer":
            await ctx.ack({"text": "answered"})
            await ctx.ack({"text": "twice"})  # ignored: one ack per delivery


async def test_routes_come_before_type_handlers_and_reply_in_thread():
    sent = sends(await run_consumer(Bot, make_message(text="deploy web", ts="5.5"),
                                    make_message(text="hello", channel="C9")))
    assert sent == [
        {"type": "slack.send", "action": "post", "channel": "C0TEST", "text": "deploying web", "thread_ts": "5.5"},
        {"type": "slack.send", "action": "post", "channel": "C9", "text": "heard hello"},
    ]


async def test_sync_handlers_react():
    sent = sends(await run_consumer(Bot, make_message("slack.reaction_added", ts="7.7")))
    assert sent == [{"type": "slack.send", "action": "react", "channel": "C0TEST", "ts": "7.7", "name": "eyes"}]


async def test_command_acks_once_with_payload_or_empty_when_the_handler_does_not():
    sent = await run_consumer(Bot, make_message("slack.command", text="answer"),
                              make_message("slack.command", text="other"))
    assert [(m["__channel__"], m.get("payload")) for m in sent] == [
        ("slack-test-ack", {"text": "answered"}), ("slack-test-ack", None)]
    sends(sent)


async def test_a_failing_handler_is_counted_and_still_acked():
    sent = await run_consumer(Bot, make_message("slack.command", command="/fail"),
                              make_message(text="still alive"))
    assert [m["type"] for m in sent] == ["slack.ack", "slack.send"]
    assert (sent.stats["failed"], sent.stats["handled"]) == (1, 1)


async def test_messages_without_a_handler_do_nothing():
    assert await run_consumer(Bot, make_message("slack.leave"), make_message("slack.event")) == []


async def test_demo_bot():
    from demo.slack_consumers import DemoSlackConsumer

    sent = sends(await run_consumer(
        DemoSlackConsumer,
        make_message(text="echo hi there", channel="C1"),
        make_message(text="echo edited", subtype="message_changed"),
        make_message("slack.view_submission", values={"note": {"input": {"value": ""}}}),
        make_message("slack.action", actions=[{"action_id": "a", "value": "blue"}]),
    ))
    assert sent[0] == {"type": "slack.send", "action": "post", "channel": "C1", "text": "hi there"}
    assert sent[1] == {"type": "slack.ack", "payload": {"response_action": "errors",
                                                        "errors": {"note": "write something"}}}
    assert sent[2]["action"] == "respond" and sent[2]["text"] == "you clicked blue"
    assert len(sent) == 3
