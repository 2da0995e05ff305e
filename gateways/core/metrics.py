"""Counters, gauges and histograms of one daemon, exposed with ``prometheus_client``.

:class:`Metrics` is the facade the gateways call (``inc``, ``set``, ``add``,
``observe``): a series is declared on first use, with the label names of
that call. Each instance has a registry of its own, never the library's
global one, so that two daemons hosted in one process (tests) keep apart.

Gauges that are cheaper to read than to keep up to date (queue depths, the
dead-letter store) are read at scrape time: :meth:`Metrics.on_scrape`
registers a callback that :meth:`Metrics.scrape` runs before rendering.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import threading
from typing import Any, Awaitable, Callable, Union

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: The exposition's Content-Type: the text format every Prometheus reads (our
#: names need none of 1.0.0's escaping; the library's "latest" moves with its version).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Bounds of every histogram, in seconds: a layer round trip is sub-millisecond, a Web API call seconds.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: Seconds a scrape-time callback may take before the scrape goes on without it.
SCRAPE_TIMEOUT = 2.0

#: A scrape-time callback: gets the :class:`Metrics`, sets gauges on it; may be ``async``.
ScrapeCallback = Callable[["Metrics"], Union[None, Awaitable[None]]]

log = logging.getLogger("gateway.metrics")


class _Registry(CollectorRegistry):
    """A registry without the ``<name>_created`` series: they would double the
    series count and nothing reads them. (The library's switch for that is
    process-wide, and the worker's process is the Django project's too.)"""

    def collect(self) -> Any:
        for metric in super().collect():
            metric.samples = [sample for sample in metric.samples if not sample.name.endswith("_created")]
            yield metric


class Metrics:
    """A registry of named series.

    A call that names a series with another kind or other label names than
    its first use is a bug: it raises :class:`ValueError` when ``strict``,
    and otherwise is logged (once per series) and dropped, so that a metric
    never costs a message.

    Args:
        namespace: prefix of every metric name, e.g. ``gateway``.
        strict: raise on such calls (default: when ``GATEWAY_STRICT=1``, as in the tests).
    """

    def __init__(self, namespace: str = "gateway", strict: bool | None = None) -> None:
        self.namespace = namespace
        self.strict = os.environ.get("GATEWAY_STRICT") == "1" if strict is None else strict
        self._misused: set[str] = set()
        self.registry = _Registry(auto_describe=False)
        self._series: dict[str, tuple[Any, tuple[str, ...]]] = {}
        self._lock = threading.Lock()
        self._on_scrape: list[ScrapeCallback] = []
        # Children already resolved, by (kind, name, labels): the hot paths count
        # every message, and prometheus_client's labels() lookup costs a lock and
        # a few allocations each time.
        self._children: dict[tuple[Any, ...], Any] = {}

    def _metric(self, kind: type, name: str, help_text: str, labels: dict[str, str]) -> Any:
        """The child of series ``name`` for ``labels`` (``None`` for a misuse that is not raised)."""
        key = (kind, name, *labels.items())
        child = self._children.get(key)
        if child is None:
            child = self._resolve(kind, name, help_text, labels)
            if child is not None:
                self._children[key] = child
        return child

    def _resolve(self, kind: type, name: str, help_text: str, labels: dict[str, str]) -> Any:
        """The child of series ``name`` for ``labels``, declaring the series on first use."""
        names = tuple(sorted(labels))
        known = self._series.get(name)
        if known is None:
            with self._lock:
                known = self._series.get(name)
                if known is None:
                    options: dict[str, Any] = {"buckets": BUCKETS} if kind is Histogram else {}
                    # prometheus_client adds `_total` to a counter's name itself.
                    base = name[: -len("_total")] if kind is Counter and name.endswith("_total") else name
                    metric = kind(base, help_text or name, names, namespace=self.namespace,
                                  registry=self.registry, **options)
                    known = self._series[name] = (metric, names)
        metric, declared = known
        problem = None
        if not isinstance(metric, kind):
            problem = f"metric {name!r} is a {type(metric).__name__}, not a {kind.__name__}"
        elif declared != names:
            problem = f"metric {name!r} has labels {declared}, not {names}"
        if problem is None:
            return metric.labels(**{k: str(v) for k, v in labels.items()}) if names else metric
        if self.strict:
            raise ValueError(problem)
        if name not in self._misused:
            self._misused.add(name)
            log.error("%s: sample dropped (logged once)", problem)
        return None

    def inc(self, name: str, help_text: str = "", amount: float = 1, **labels: str) -> None:
        """Add ``amount`` to counter ``name`` with ``labels``."""
        series = self._metric(Counter, name, help_text, labels)
        if series is not None:
            series.inc(amount)

    def set(self, name: str, value: float, help_text: str = "", **labels: str) -> None:
        """Set gauge ``name`` to ``value``."""
        series = self._metric(Gauge, name, help_text, labels)
        if series is not None:
            series.set(value)

    def add(self, name: str, amount: float, help_text: str = "", **labels: str) -> None:
        """Move gauge ``name`` by ``amount``."""
        series = self._metric(Gauge, name, help_text, labels)
        if series is not None:
            series.inc(amount)

    def observe(self, name: str, seconds: float, help_text: str = "", **labels: str) -> None:
        """Record ``seconds`` in histogram ``name``."""
        series = self._metric(Histogram, name, help_text, labels)
        if series is not None:
            series.observe(seconds)

    def clear(self, name: str) -> None:
        """Drop every labelled series of ``name`` (a scrape-time gauge whose label
        values come and go, e.g. channels that no longer hold anything)."""
        known = self._series.get(name)
        if known is not None and known[1]:
            known[0].clear()
            for key in [key for key in self._children if key[1] == name]:
                del self._children[key]

    def value(self, name: str, **labels: str) -> float:
        """The current value of a counter or gauge (0 when never touched)."""
        known = self._series.get(name)
        if known is None:
            return 0
        sample = name if not isinstance(known[0], Counter) or name.endswith("_total") else f"{name}_total"
        found = self.registry.get_sample_value(f"{self.namespace}_{sample}", {k: str(v) for k, v in labels.items()})
        return found or 0

    def on_scrape(self, callback: ScrapeCallback) -> None:
        """Run ``callback(metrics)`` before each scrape (plain or ``async``).

        It sets the gauges it owns. One that raises or takes longer than
        :data:`SCRAPE_TIMEOUT` seconds is logged and counted in
        ``gateway_scrape_errors_total``; the scrape goes on with the values
        it left.
        """
        self._on_scrape.append(callback)

    async def scrape(self) -> str:
        """Run the scrape-time callbacks, then render: the text for ``/metrics``."""
        for callback in list(self._on_scrape):
            name = getattr(callback, "__qualname__", None) or type(callback).__name__
            try:
                result = callback(self)
                if inspect.isawaitable(result):
                    await asyncio.wait_for(result, SCRAPE_TIMEOUT)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a broken collector must not break the scrape
                log.warning("metrics collector %s failed: %s: %s", name, type(exc).__name__, exc)
                self.inc("scrape_errors_total", "scrape-time collectors that failed or timed out",
                         collector=name)
        return self.render()

    def render(self) -> str:
        """The exposition text of the current values (no scrape-time callbacks)."""
        return generate_latest(self.registry).decode()
