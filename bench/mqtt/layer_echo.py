"""The raw channel-layer round trip's other end: answers each message on its reply_channel.

    GATEWAY_CONFIG=FILE python -m bench.mqtt.layer_echo CHANNEL
"""

from __future__ import annotations

import asyncio
import os
import sys

from gateways.core.config import load_config
from gateways.core.layer import build_layer


async def main(channel: str) -> None:
    layer = build_layer(load_config(os.environ["GATEWAY_CONFIG"]).layer)
    while True:
        message = await layer.receive(channel)
        await layer.send(message["reply_channel"], {"type": "bench.pong", "payload": message["payload"]})


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
