"""The demo's Slack bot (config/demo.yaml routes every Slack message here).

- a message ``echo <text>`` is answered in the same channel with ``<text>``;
- a mention is answered in its thread; joins are welcomed, leaves noted;
- a reaction is repeated on the same message;
- ``/echo <text>`` is answered in the command's ack;
- a button click is answered through its response_url;
- a modal with an empty ``note`` field is refused with a field error;
- an external select is offered the colours that start with what was typed.
"""

from consumers.slack import SlackConsumer, SlackContext, on

COLOURS = ["red", "green", "blue", "black", "white"]


class DemoSlackConsumer(SlackConsumer):
    """Echo bot for the demo."""

    @on("slack.message", text=r"^echo (?P<rest>.+)$")
    async def echo(self, ctx: SlackContext) -> None:
        if ctx.message.get("subtype") is None:  # not edits, deletes or joins
            await ctx.say(ctx.match["rest"])

    async def on_mention(self, ctx: SlackContext) -> None:
        await ctx.reply_in_thread(f"hello <@{ctx.user}>")

    async def on_join(self, ctx: SlackContext) -> None:
        await ctx.say(f"welcome <@{ctx.user}>")

    async def on_leave(self, ctx: SlackContext) -> None:
        await ctx.say(f"<@{ctx.user}> left")

    async def on_reaction(self, ctx: SlackContext) -> None:
        if ctx.type == "slack.reaction_added":
            await ctx.react(ctx.message["reaction"])

    async def on_command(self, ctx: SlackContext) -> None:
        if ctx.message["command"] == "/echo":
            await ctx.ack({"response_type": "in_channel", "text": ctx.text or "(nothing to echo)"})

    async def on_action(self, ctx: SlackContext) -> None:
        for action in ctx.message["actions"]:
            await ctx.respond(f"you clicked {action.get('value')}", replace_original=False)

    async def on_view_submission(self, ctx: SlackContext) -> None:
        note = (ctx.message["values"].get("note") or {}).get("input", {}).get("value")
        if not note:
            await ctx.ack({"response_action": "errors", "errors": {"note": "write something"}})

    async def on_options(self, ctx: SlackContext) -> None:
        typed = (ctx.text or "").lower()
        await ctx.ack({"options": [{"text": {"type": "plain_text", "text": c}, "value": c}
                                   for c in COLOURS if c.startswith(typed)]})
