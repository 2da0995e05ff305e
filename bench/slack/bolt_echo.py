"""The baseline: a Slack Bolt AsyncApp in Socket Mode doing the demo's echo.

Run by ``python -m bench.slack`` as its own process, pointed at the stand-in:
``python bench/slack/bolt_echo.py API_URL APP_TOKEN BOT_TOKEN``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys

from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient


async def main(api_url: str, app_token: str, bot_token: str) -> None:
    app = AsyncApp(client=AsyncWebClient(token=bot_token, base_url=api_url))

    @app.message(re.compile(r"^echo (?P<rest>.+)$"))
    async def echo(message, say, context) -> None:  # noqa: ANN001 - Bolt injects by name
        if message.get("subtype") is None:
            await say(context["matches"][0])

    handler = AsyncSocketModeHandler(app, app_token)
    await handler.connect_async()
    print("bolt connected", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(*sys.argv[1:4]))
