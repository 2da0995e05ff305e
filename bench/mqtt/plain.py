"""The ceiling: a plain aiomqtt subscriber counting messages in one process.

    python -m bench.mqtt.plain PORT QOS
"""

from __future__ import annotations

import asyncio
import sys

import aiomqtt

from bench.mqtt.apps import Tally


async def main(port: int, qos: int) -> None:
    tally = Tally()
    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-plain") as client:
        await client.subscribe("bench/in/#", qos)
        async for message in client.messages:
            answer = tally.see(message.payload)
            if answer is not None:
                await client.publish("bench/done", answer, qos=1)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
