"""The Django side without a gateway: SlackConsumer, routing, the test helpers
and the demo bot."""

from __future__ import annotations

import django
import pytest
from django.conf import settings

from consumers.slack import SlackConsumer, SlackContext, on
from consumers.testing import SlackCommunicator


@pytest.fixture(scope="module", autouse=True)
def django_settings():
    if not settings.configured:
        settings.configure(INSTALLED_APPS=[], DATABASES={})
        django.setup()


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
    async with SlackCommunicator(Bot) as slack:
        await slack.message("deploy web", ts="5.5")
        await slack.message("hello", channel="C9")
        assert await slack.receive_send() == {"type": "slack.send", "action": "post", "channel": "C0TEST",
                                              "text": "deploying web", "thread_ts": "5.5"}
        assert await slack.receive_send() == {"type": "slack.send", "action": "post", "channel": "C9",
                                              "text": "heard hello"}
        assert await slack.receive_nothing()


async def test_sync_handlers_react():
    async with SlackCommunicator(Bot) as slack:
        await slack.reaction("thumbsup", ts="7.7")
        assert await slack.receive_send() == {"type": "slack.send", "action": "react", "channel": "C0TEST",
                                              "ts": "7.7", "name": "eyes"}


async def test_command_acks_once_with_payload_or_empty_when_the_handler_does_not():
    async with SlackCommunicator(Bot) as slack:
        answered = await slack.command("/test", "answer")
        other = await slack.command("/test", "other")
        assert await slack.receive_ack(answered) == {"type": "slack.ack", "payload": {"text": "answered"}}
        assert await slack.receive_ack(other) == {"type": "slack.ack", "payload": None}
        assert await slack.harness.receive_nothing(answered["ack_channel"])  # not twice


async def test_a_failing_handler_fails_the_test_and_is_still_acked():
    async with SlackCommunicator(Bot) as slack:
        failing = await slack.command("/fail")
        with pytest.raises(RuntimeError, match="boom"):
            await slack.receive_ack(failing)
        assert await slack.receive_ack(failing) == {"type": "slack.ack", "payload": None}
        await slack.message("still alive")
        assert (await slack.receive_send())["text"] == "heard still alive"
    assert (slack.stats["failed"], slack.stats["handled"]) == (1, 1)


async def test_messages_without_a_handler_do_nothing():
    async with SlackCommunicator(Bot) as slack:
        await slack.leave()
        await slack.event("slack.event")
        assert await slack.receive_nothing()


async def test_demo_bot():
    from demo.slack_consumers import DemoSlackConsumer

    async with SlackCommunicator(DemoSlackConsumer) as slack:
        await slack.message("echo hi there", channel="C1")
        assert await slack.receive_send() == {"type": "slack.send", "action": "post", "channel": "C1",
                                              "text": "hi there"}
        await slack.message("echo edited", subtype="message_changed")
        assert await slack.receive_nothing()
        submission = await slack.event("slack.view_submission", values={"note": {"input": {"value": ""}}})
        assert (await slack.receive_ack(submission))["payload"] == {"response_action": "errors",
                                                                    "errors": {"note": "write something"}}
        await slack.event("slack.action", actions=[{"action_id": "a", "value": "blue"}])
        click = await slack.receive_send()
        assert click["action"] == "respond" and click["text"] == "you clicked blue"
        assert await slack.receive_nothing()
