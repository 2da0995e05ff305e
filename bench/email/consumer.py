"""The bench's consumer: receives email.receive from the layer and acknowledges it.

Run as a process next to the gateway (the "fast path": no Django); the bench
counts the acknowledgements through the gateway's metrics.
"""

from __future__ import annotations

import asyncio
import sys

from gateways.core.config import load_config
from gateways.core.layer import build_layer


async def main(config_path: str, tasks: int) -> None:
    layer = build_layer(load_config(config_path).layer)

    async def loop() -> None:
        while True:
            message = await layer.receive("email.receive")
            await layer.send(message["reply_channel"], {"type": "email.ack", "id": message["id"]})

    print("ready", flush=True)
    await asyncio.gather(*(loop() for _ in range(tasks)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 8))
