"""The checks: :class:`ConformanceSuite`, which a gateway's test class subclasses."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, ClassVar

import pytest
import pytest_asyncio

from gateways.conformance.driver import Driver, Harness, parse_samples
from gateways.core.specs import load_schema, spec_document

#: The prefix of every metric name a gateway exposes.
METRIC_PREFIX = "gateway_"
#: Seconds past the grace period a stopping gateway may take to close
#: connections and the layer (the core's bound on closing is 5 s).
CLOSE_MARGIN = 10.0
#: Inbound events produced while the layer holds one message per channel.
BACKPRESSURE_EVENTS = 3

_HEADING = re.compile(r"^#{2,6}\s+(.*)$")
_CODE = re.compile(r"`([^`]+)`")


def spec_message_types(protocol: str, document: str) -> set[str]:
    """The message types a spec names: the ```<protocol>.<name>``` words of
    its headings, before any parenthesis (``### `mqtt.publish` (inbound)``)."""
    found = set()
    for line in document.splitlines():
        heading = _HEADING.match(line)
        if heading:
            title = heading.group(1).split("(", 1)[0]
            found.update(word for word in _CODE.findall(title)
                         if re.fullmatch(rf"{re.escape(protocol)}\.[a-z0-9_.]+", word))
    return found


async def _answered(harness: Harness) -> tuple[str, dict[str, Any]]:
    """Produce one event and receive the message it becomes."""
    await harness.driver.produce(harness)
    return await harness.receive()


class ConformanceSuite:
    """Every check of the kit; set ``driver_class`` in a subclass named ``Test...``."""

    driver_class: ClassVar[type[Driver]]

    @pytest_asyncio.fixture
    async def harness(self, tmp_path: Path) -> AsyncIterator[Harness]:
        """A started harness: the driver's servers and a private redis-server."""
        async with Harness(self.driver_class(), tmp_path) as harness:
            yield harness

    def test_schema_for_every_message_type_the_spec_names(self) -> None:
        protocol = self.driver_class.protocol
        schema = load_schema(protocol)
        named = spec_message_types(protocol, spec_document(protocol))
        assert named, f"{protocol}.md names no message type in its headings"
        assert named == set(schema.message_types), (
            f"named in {protocol}.md without a schema: {sorted(named - set(schema.message_types))}; "
            f"with a schema, not named: {sorted(set(schema.message_types) - named)}")

    @pytest.mark.asyncio
    async def test_emitted_messages_are_valid_and_replies_act(self, harness: Harness) -> None:
        await harness.start()
        channel, received = await _answered(harness)
        target, reply = harness.driver.reply(received, channel)
        assert harness.schema.problem(reply) is None, "the driver's reply does not match the schema"
        await harness.send(target, reply)
        await harness.driver.observe(harness, reply)
        harness.assert_running()

    @pytest.mark.asyncio
    async def test_invalid_consumer_message_is_answered_and_nothing_stops(self, harness: Harness) -> None:
        await harness.start()
        channel, received = await _answered(harness)
        target, invalid = harness.driver.invalid_reply(received, channel)
        assert harness.schema.problem(invalid) is not None, "the driver's invalid reply is valid"
        await harness.send(target, invalid)
        await harness.wait_until(lambda: harness.metric("gateway_invalid_messages_total"), 20,
                                 "the invalid message counted in gateway_invalid_messages_total")
        await harness.driver.observe_invalid(harness, invalid)
        harness.assert_running()
        await _answered(harness)  # the gateway goes on taking events

    @pytest.mark.asyncio
    async def test_full_layer_is_refused_the_protocols_way(self, harness: Harness) -> None:
        await harness.start(capacity=1)
        producers = [asyncio.ensure_future(harness.driver.produce(harness)) for _ in range(BACKPRESSURE_EVENTS)]
        try:
            await harness.wait_until(lambda: harness.metric("gateway_handoff_failures_total", reason="full"), 30,
                                     "a hand-off refused by the full layer (gateway_handoff_failures_total)")
            await harness.driver.observe_refusal(harness)
            harness.assert_running()
        finally:
            for producer in producers:
                producer.cancel()
            await asyncio.gather(*producers, return_exceptions=True)
        assert (await harness.get("/healthz"))[0] == 200, "a full channel is not an unhealthy gateway"

    @pytest.mark.asyncio
    async def test_sigterm_drains_and_exits_0(self, harness: Harness) -> None:
        await harness.start()
        await harness.driver.produce(harness)
        harness.terminate()
        code = await harness.exit_code(harness.driver.grace_period + CLOSE_MARGIN)
        assert code == 0, f"exit code {code} after SIGTERM:\n{harness.log()}"
        await harness.receive()  # what the gateway took before stopping reached the layer

    @pytest.mark.asyncio
    async def test_healthz_follows_the_layer(self, harness: Harness) -> None:
        await harness.start()
        assert (await harness.get("/healthz"))[0] == 200
        harness.redis.stop()
        await harness.wait_until(self._status_is(harness, 503), 30, "/healthz 503 with the layer down")
        await harness.redis.start()
        await harness.wait_until(self._status_is(harness, 200), 30, "/healthz 200 with the layer back")
        harness.assert_running()

    @staticmethod
    def _status_is(harness: Harness, status: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return (await harness.get("/healthz"))[0] == status
        return check

    @pytest.mark.asyncio
    async def test_metric_names_have_the_prefix_and_no_duplicates(self, harness: Harness) -> None:
        await harness.start()
        await _answered(harness)
        text = (await harness.get("/metrics"))[1]
        declared = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
        assert declared, "no metric declared"
        assert len(declared) == len(set(declared)), f"metrics declared twice: {sorted(declared)}"
        wrong = [name for name in declared if not name.startswith(METRIC_PREFIX)]
        assert not wrong, f"metrics without the {METRIC_PREFIX} prefix: {wrong}"
        known = set(declared)
        for name, _labels, _value in parse_samples(text):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert name in known or base in known, f"sample {name} has no # TYPE line"
