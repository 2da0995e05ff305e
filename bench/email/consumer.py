"""The bench's consumer: receives email.receive from the layer and acknowledges it.

Run as a process next to the gateway; prints its count whenever it changed (every 20 ms at most) so the
bench can count what arrived.
"""

from __future__ import annotations

import asyncio
import sys

from gateways.core.config import load_config
from gateways.core.layer import build_layer


async def main(config_path: str, tasks: int) -> None:
    layer = build_layer(load_config(config_path).layer)
    count = 0

    async def loop() -> None:
        nonlocal count
        while True:
            message = await layer.receive("email.receive")
            await layer.send(message["reply_channel"], {"type": "email.ack", "id": message["id"]})
            count += 1

    async def report() -> None:
        shown = -1
        while True:
            if count != shown:
                shown = count
                print(shown, flush=True)
            await asyncio.sleep(0.02)

    print("ready", flush=True)
    await asyncio.gather(report(), *(loop() for _ in range(tasks)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 8))
