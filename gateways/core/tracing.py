"""OpenTelemetry tracing of each message, when the ``otel`` extra is installed and enabled.

One trace per message: the gateway's hand-off to the layer (``send
<channel>``, a PRODUCER span), the consumer handling it in ``gateway worker``
(``process <channel>``), and each message the consumer sends back to a
gateway, handled there (``deliver <type>``). The context travels in the
message under :data:`TRACE_KEY` as W3C trace context (``{"traceparent":
"00-<trace id>-<span id>-01"}``), which every protocol's schema allows.

Tracing is off unless the environment asks for it (see :func:`setup`); while
it is off nothing here is installed: the runtime, the gateway and the
layers keep their own unwrapped methods, and the consumer's hook is a shared
no-op context manager.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
import threading
from typing import Any, Awaitable, Callable, ContextManager, Iterator

#: The message key holding the trace context.
TRACE_KEY = "trace"
#: A file to append each finished span to as one JSON object per line (a
#: debugging aid, and what the tests read); enables tracing by itself.
FILE_VARIABLE = "GATEWAY_TRACES_FILE"

log = logging.getLogger("gateway.tracing")

_tracer: Any = None
_setup_done = False
_setup_lock = threading.Lock()
_NO_SPAN: ContextManager[None] = contextlib.nullcontext()
#: Set while a wrapped ``send_many`` starts the spans itself (its fallback calls ``send``).
_batch_spans: contextvars.ContextVar[bool] = contextvars.ContextVar("gateway_batch_spans", default=False)


def setup(service: str) -> bool:
    """Turn tracing on for this process when asked; whether it is on.

    It is on when ``opentelemetry-sdk`` is importable (``pip install
    'channels-gateways[otel]'``), ``OTEL_SDK_DISABLED`` is not ``true``, and
    ``OTEL_TRACES_EXPORTER`` names one or more exporters (``otlp``,
    ``console``: any the installed packages register; ``none`` is off) or
    :data:`FILE_VARIABLE` names a file. A tracer provider that the process
    already has (``opentelemetry-instrument``) is used as it is. The other
    ``OTEL_*`` variables (endpoint, headers, sampler, ``OTEL_SERVICE_NAME``)
    mean what the SDK says; the service name is ``service`` by default.
    Called more than once, only the first call counts.
    """
    global _tracer, _setup_done
    with _setup_lock:
        if _setup_done:
            return _tracer is not None
        _setup_done = True
        if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return False
        exporters = [name.strip() for name in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",")
                     if name.strip() and name.strip() != "none"]
        path = os.environ.get(FILE_VARIABLE)
        if not exporters and not path:
            return False
        try:
            from opentelemetry import trace
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        except ImportError:
            log.warning("tracing asked for, but opentelemetry-sdk is not installed "
                        "(pip install 'channels-gateways[otel]'); tracing is off")
            return False
        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service}
            provider = TracerProvider(resource=Resource.create(attributes))
            for name in exporters:
                exporter = _exporter(name)
                if exporter is not None:
                    provider.add_span_processor(BatchSpanProcessor(exporter))
            if path:
                provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(path)))
            trace.set_tracer_provider(provider)
        _tracer = trace.get_tracer("channels-gateways")
        log.info("tracing on (exporters: %s)", ", ".join(exporters + ([path] if path else [])) or "the process's")
        return True


def _exporter(name: str) -> Any:
    """The span exporter registered as ``name`` (entry point group ``opentelemetry_traces_exporter``)."""
    from importlib.metadata import entry_points

    found = entry_points(group="opentelemetry_traces_exporter", name=name)
    if not found:
        hint = " (pip install opentelemetry-exporter-otlp)" if name.startswith("otlp") else ""
        log.warning("OTEL_TRACES_EXPORTER names %r, which no installed package provides%s", name, hint)
        return None
    return next(iter(found)).load()()


class JsonLinesExporter:
    """Appends each span to a file as one JSON object per line.

    Args:
        path: the file.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Any) -> Any:
        """Write ``spans``; always SUCCESS (a full disk is not worth losing the daemon)."""
        from opentelemetry.sdk.trace.export import SpanExportResult

        lines = "".join(span.to_json(indent=None) + "\n" for span in spans)
        with self._lock:
            try:
                with open(self.path, "a", encoding="utf-8") as file:
                    file.write(lines)
            except OSError as exc:
                log.warning("could not write spans to %s: %s", self.path, exc)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release: the file is opened per export."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Nothing is buffered."""
        return True


def enabled() -> bool:
    """Whether :func:`setup` turned tracing on."""
    return _tracer is not None


# --------------------------------------------------------------------------
# Spans.


def _parent(message: Any) -> Any:
    """The OpenTelemetry context carried by ``message``, or None."""
    carrier = message.get(TRACE_KEY) if isinstance(message, dict) else None
    if not isinstance(carrier, dict):
        return None
    from opentelemetry.propagate import extract

    return extract(carrier)


def _carrying(message: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``message`` carrying the current span's context."""
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    return {**message, TRACE_KEY: carrier} if carrier else message


def _attributes(message: Any, channel: str | None) -> dict[str, str]:
    attributes = {"messaging.system": "channels"}
    if channel:
        attributes["messaging.destination.name"] = channel
    if isinstance(message, dict):
        if isinstance(message.get("type"), str):
            attributes["gateway.message.type"] = message["type"]
        if isinstance(message.get("id"), str):
            attributes["messaging.message.id"] = message["id"]
    return attributes


@contextlib.contextmanager
def _span(name: str, kind_name: str, message: Any, channel: str | None, parent: Any = None) -> Iterator[Any]:
    from opentelemetry.trace import SpanKind

    with _tracer.start_as_current_span(name, context=parent, kind=getattr(SpanKind, kind_name),
                                       attributes=_attributes(message, channel)) as span:
        yield span


def consuming(message: Any, channel: str | None) -> ContextManager[Any]:
    """The span of a consumer handling ``message`` from ``channel``, child of the
    context the message carries; current while the handler runs, so that what
    the handler sends carries it on. A shared no-op while tracing is off."""
    if _tracer is None:
        return _NO_SPAN
    mtype = message.get("type") if isinstance(message, dict) else None
    return _span(f"process {channel or mtype}", "CONSUMER", message, channel, _parent(message))


# --------------------------------------------------------------------------
# Wiring: each replaces bound methods on one object, and only while tracing is on.


def instrument_runtime(runtime: Any) -> None:
    """Trace a gateway daemon's hand-offs (``runtime.send``/``send_many``)."""
    if not setup(f"gateway-{runtime.protocol}"):
        return
    runtime.send = _traced_send(runtime.send)
    runtime.send_many = _traced_send_many(runtime.send_many)


def instrument_gateway(gateway: Any) -> None:
    """Trace a gateway's handling of consumers' messages (``gateway.handle``)."""
    if _tracer is not None:
        gateway.handle = _traced_handle(gateway.handle)


def instrument_layer(layer: Any) -> None:
    """Make what a consumer sends through ``layer`` carry the current trace context
    (``gateway worker``: the project's layer and the one it takes messages off)."""
    if _tracer is None or layer is None or getattr(layer, "_gateway_traced", False):
        return
    for name in ("send", "group_send"):
        method = getattr(layer, name, None)
        if method is not None:
            setattr(layer, name, _carrying_send(method))
    many = getattr(layer, "send_many", None)
    if many is not None:
        layer.send_many = _carrying_send_many(many)
    layer._gateway_traced = True


def _traced_send(send: Callable[[str, dict[str, Any]], Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    @functools.wraps(send)
    async def traced(channel: str, message: dict[str, Any]) -> None:
        if _batch_spans.get():
            return await send(channel, message)
        with _span(f"send {channel}", "PRODUCER", message, channel, _parent(message)):
            return await send(channel, _carrying(message))

    return traced


def _traced_send_many(send_many: Callable[..., Awaitable[int]]) -> Callable[..., Awaitable[int]]:
    @functools.wraps(send_many)
    async def traced(channel: str, messages: list[dict[str, Any]]) -> int:
        if _batch_spans.get():  # a chunk of a larger call: its spans are started
            return await send_many(channel, messages)
        from opentelemetry.trace import use_span

        spans, carried = [], []
        with contextlib.ExitStack() as stack:
            for message in messages:
                # Each message's span is current only while its context is copied in.
                span = _tracer.start_span(f"send {channel}", context=_parent(message),
                                          kind=_kind("PRODUCER"), attributes=_attributes(message, channel))
                spans.append(span)
                stack.callback(span.end)
                with use_span(span, end_on_exit=False):
                    carried.append(_carrying(message))
            token = _batch_spans.set(True)
            try:
                return await send_many(channel, carried)
            except BaseException as exc:
                from opentelemetry.trace import Status, StatusCode

                for span in spans:
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                raise
            finally:
                _batch_spans.reset(token)

    return traced


def _traced_handle(handle: Callable[[str, dict[str, Any]], Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(handle)
    async def traced(channel: str, message: dict[str, Any]) -> Any:
        with _span(f"deliver {message.get('type')}", "CONSUMER", message, channel, _parent(message)):
            return await handle(channel, message)

    return traced


def _carrying_send(send: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(send)
    async def carrying(channel: str, message: dict[str, Any]) -> Any:
        if isinstance(message, dict) and TRACE_KEY not in message:
            message = _carrying(message)
        return await send(channel, message)

    return carrying


def _carrying_send_many(send_many: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(send_many)
    async def carrying(channel: str, messages: list[dict[str, Any]]) -> Any:
        return await send_many(channel, [m if TRACE_KEY in m else _carrying(m) for m in messages])

    return carrying


def _kind(name: str) -> Any:
    from opentelemetry.trace import SpanKind

    return getattr(SpanKind, name)
