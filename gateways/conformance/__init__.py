"""The conformance kit: a pytest suite any gateway runs against itself.

A gateway package writes a :class:`Driver` (how to configure its section,
produce one inbound protocol event, answer it and observe the protocol
action the answer causes) and a test class::

    from gateways.conformance import ConformanceSuite, Driver

    class LineDriver(Driver):
        protocol = "line"
        ...

    class TestLineConformance(ConformanceSuite):
        driver_class = LineDriver

The suite starts the real ``gateway <protocol>`` process against a private
redis-server and checks what every gateway owes its users: a schema for
every message type the spec names, every emitted message valid, invalid
consumer messages answered the protocol's way, backpressure when the layer
is full, drain on SIGTERM, ``/healthz`` and the metric names. It needs the
``conformance`` extra (pytest, pytest-asyncio).
"""

from gateways.conformance.driver import Driver, Harness
from gateways.conformance.suite import ConformanceSuite

__all__ = ["ConformanceSuite", "Driver", "Harness"]
