"""Counters, gauges and histograms, rendered in Prometheus's text format.

Small on purpose: a daemon has a few dozen series, and the exposition format
is simple enough that a client library would only add a dependency.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

Labels = tuple[tuple[str, str], ...]

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _labels(labels: dict[str, str]) -> Labels:
    return tuple(sorted((k, str(v)) for k, v in labels.items()))


def _render_labels(labels: Labels, extra: str = "") -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    """A registry of named series.

    Args:
        namespace: prefix of every metric name, e.g. ``gateway``.
    """

    def __init__(self, namespace: str = "gateway") -> None:
        self.namespace = namespace
        self._lock = threading.Lock()
        self._help: dict[str, tuple[str, str]] = {}
        self._values: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._hist: dict[str, dict[Labels, list[float]]] = defaultdict(dict)

    def _name(self, name: str, kind: str, help_text: str) -> str:
        full = f"{self.namespace}_{name}"
        self._help.setdefault(full, (kind, help_text))
        return full

    def inc(self, name: str, help_text: str = "", amount: float = 1, **labels: str) -> None:
        """Add ``amount`` to counter ``name`` with ``labels``."""
        full = self._name(name, "counter", help_text)
        key = _labels(labels)
        with self._lock:
            series = self._values[full]
            series[key] = series.get(key, 0) + amount

    def set(self, name: str, value: float, help_text: str = "", **labels: str) -> None:
        """Set gauge ``name`` to ``value``."""
        full = self._name(name, "gauge", help_text)
        with self._lock:
            self._values[full][_labels(labels)] = value

    def add(self, name: str, amount: float, help_text: str = "", **labels: str) -> None:
        """Move gauge ``name`` by ``amount``."""
        full = self._name(name, "gauge", help_text)
        key = _labels(labels)
        with self._lock:
            series = self._values[full]
            series[key] = series.get(key, 0) + amount

    def observe(self, name: str, seconds: float, help_text: str = "", **labels: str) -> None:
        """Record ``seconds`` in histogram ``name``."""
        full = self._name(name, "histogram", help_text)
        key = _labels(labels)
        with self._lock:
            hist = self._hist[full].get(key)
            if hist is None:
                hist = self._hist[full][key] = [0.0] * (len(_BUCKETS) + 2)
            hist[bisect.bisect_left(_BUCKETS, seconds)] += 1
            hist[-1] += seconds

    def value(self, name: str, **labels: str) -> float:
        """The current value of a counter or gauge (0 when never touched)."""
        with self._lock:
            return self._values.get(f"{self.namespace}_{name}", {}).get(_labels(labels), 0)

    def render(self) -> str:
        """The exposition text for ``/metrics``."""
        lines: list[str] = []
        with self._lock:
            for full, (kind, help_text) in sorted(self._help.items()):
                lines.append(f"# HELP {full} {help_text or full}")
                lines.append(f"# TYPE {full} {kind}")
                if kind == "histogram":
                    for labels, hist in sorted(self._hist[full].items()):
                        running = 0.0
                        for bound, count in zip(_BUCKETS, hist):
                            running += count
                            le = _render_labels(labels, f'le="{bound}"')
                            lines.append(f"{full}_bucket{le} {running:g}")
                        running += hist[len(_BUCKETS)]
                        le = _render_labels(labels, 'le="+Inf"')
                        lines.append(f"{full}_bucket{le} {running:g}")
                        lines.append(f"{full}_sum{_render_labels(labels)} {hist[-1]:g}")
                        lines.append(f"{full}_count{_render_labels(labels)} {running:g}")
                else:
                    for labels, value in sorted(self._values[full].items()):
                        lines.append(f"{full}{_render_labels(labels)} {value:g}")
        return "\n".join(lines) + "\n"
