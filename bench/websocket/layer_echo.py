"""A bare channel-layer echo process: the raw layer round trip the gateway adds to."""

import asyncio
import sys

from gateways.core.config import LayerConfig
from gateways.core.layer import build_layer


async def main(url: str, prefix: str) -> None:
    layer = build_layer(LayerConfig(url=url, prefix=prefix))
    print("ready", flush=True)
    while True:
        message = await layer.receive("bench.raw")
        await layer.send(message["reply"], {"type": "bench.pong", "i": message["i"]})


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
