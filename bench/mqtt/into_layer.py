"""MQTT into the layer, repeated: the gateway against a plain aiomqtt subscriber, round after round.

    python -m bench.mqtt.into_layer [--messages 6000] [--topics 8] [--rounds 3] [--qos 0,1]

``python -m bench.mqtt`` measures each system once, so its ratio carries the
noise of two single runs. This one alternates the two in the same broker and
Redis — plain aiomqtt subscriber, then the gateway into the layer read by this
process — ``--rounds`` times per QoS, prints every round, and gives the median
of the per-round ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

from bench.common import PYTHON, redis_server, start, stop
from bench.mqtt.__main__ import env_for, measure_gateway_into_layer, measure_inbound, mosquitto, write_config


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=6000, help="messages per round")
    parser.add_argument("--topics", type=int, default=8, help="topics they are spread over")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per QoS")
    parser.add_argument("--qos", default="0,1", help="QoS levels, comma-separated")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-mqtt-layer-"))
    redis, redis_url = redis_server()
    broker, port = mosquitto()
    try:
        for qos in (int(level) for level in args.qos.split(",")):
            config = write_config(workdir, redis_url, port, qos)
            env = env_for(config)
            gateway = start([PYTHON, "-m", "gateways", "mqtt", "--config", str(config)], env=env)
            ratios = []
            print(f"\nQoS {qos}: {args.messages} messages over {args.topics} topics, msgs/s")
            try:
                for round_number in range(1, args.rounds + 1):
                    plain = start([PYTHON, "-m", "bench.mqtt.plain", str(port), str(qos)], env=env)
                    try:
                        ceiling = await measure_inbound("plain", port, args.messages, args.topics, qos)
                    finally:
                        stop(plain)
                    row = await measure_gateway_into_layer(config, port, args.messages, args.topics, qos)
                    ratios.append(row["rate"] / ceiling["rate"])
                    print(f"  round {round_number}: plain aiomqtt {ceiling['rate']:8.0f}   gateway -> layer "
                          f"{row['rate']:8.0f}   ratio {ratios[-1]:.2f}   lost {ceiling['lost']}/{row['lost']}")
            finally:
                stop(gateway)
            print(f"  median ratio gateway -> layer / plain aiomqtt: {statistics.median(ratios):.2f}")
    finally:
        stop(broker)
        stop(redis)


if __name__ == "__main__":
    asyncio.run(main())
