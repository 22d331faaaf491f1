"""Traces across HTTP and AMQP (OpenTelemetry): one trace follows an order from the request that
placed or paid it, through the inventory call, the outbox, the relay and each consumer, to the email.

Off unless OTEL_EXPORTER_OTLP_ENDPOINT is set (the setting `otel_exporter_otlp_endpoint`): then
`configure` does nothing, OpenTelemetry is not even imported, and each helper below costs one
test of a module flag. On, each process exports its spans in batches over OTLP/HTTP (protobuf)
as `<service>-<kind>` (`checkout-api`, `notifications-consumer`, see `shared.service.Root.process`);
the exporter, the batching and the sampler read the standard variables for the rest
(OTEL_EXPORTER_OTLP_HEADERS, OTEL_BSP_SCHEDULE_DELAY, OTEL_TRACES_SAMPLER, ...).

Where the spans come from:
- HTTP in: Flask (every route but the probes and /metrics), continuing the caller's trace only
  when the caller is one of our processes (it sends the service key: `FromOurProcesses`); HTTP
  out: urllib3 (checkout's inventory client) and requests (the payment provider), which send
  `traceparent` along;
- SQL: SQLAlchemy, on the engines the process names;
- events, by hand (pika has no instrumentation we can use): `outbox_context` opens a
  `create <event>` span where the event is written, and its W3C trace context (`traceparent`,
  `tracestate`) is kept on the outbox row; the relay publishes each row in a `publish <event>`
  span under it (`publishing`), and sends that span's context in the AMQP headers; a consumer
  handles each message in a `process <event>` span under those (`consuming`);
- logs: the logging instrumentation notes the trace and span ids on each record, and
  `shared.logs` writes them into the JSON line.

A root span is made for work (a request, a message), never for a loop's own queries and calls (a
relay's polls, the heartbeats, the admitter's look at the stock): each would be a trace of its
own, several a second.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

if TYPE_CHECKING:
    import sqlalchemy as sa
    from flask import Flask

    from shared.config import Settings

log = logging.getLogger("floodgate.tracing")

# /healthz, /readyz and /metrics are asked every few seconds and say nothing about an order.
UNTRACED_PATHS = r"/healthz$,/readyz$,/metrics$"
# What stands for RabbitMQ in the messaging spans' attributes.
MESSAGING_SYSTEM = "rabbitmq"

_tracer = None  # set by `configure` when tracing is on: every helper tests it first


def enabled() -> bool:
    """Whether this process exports traces."""
    return _tracer is not None


def configure(process: str, settings: Settings, engines: Iterable[sa.Engine] = (), app: Flask | None = None) -> bool:
    """Trace this process as `process` (`<service>-<kind>`) when `settings.otel_exporter_otlp_endpoint`
    is set: a tracer provider exporting over OTLP/HTTP, the requests, urllib3 and logging
    instrumentations, SQLAlchemy's on `engines`, and Flask's on `app`. Once per process: call it
    where the process starts, after gunicorn forked (the app factory runs in each worker), so each
    worker is an instance of its own with its own exporting thread. Returns whether tracing is on."""
    global _tracer
    if not settings.otel_exporter_otlp_endpoint or _tracer is not None:
        return _tracer is not None
    from opentelemetry import propagate, trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.logging import LoggingInstrumentor
    from opentelemetry.instrumentation.requests import RequestsInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
    from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(
        sampler=sampler(),
        resource=Resource.create({
            "service.name": process,
            "service.namespace": "floodgate",
            "service.instance.id": f"{socket.gethostname()}:{os.getpid()}",
        }),
    )
    # The exporter reads OTEL_EXPORTER_OTLP_ENDPOINT itself (and adds /v1/traces), as every
    # OpenTelemetry SDK does, with the rest of the OTEL_EXPORTER_OTLP_* variables.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    global _own_contexts
    _own_contexts = propagate.get_global_textmap()
    propagate.set_global_textmap(FromOurProcesses(_own_contexts, settings.service_key))
    RequestsInstrumentor().instrument(tracer_provider=provider)
    URLLib3Instrumentor().instrument(tracer_provider=provider)
    SQLAlchemyInstrumentor().instrument(tracer_provider=provider, engines=list(engines))
    # Trace ids on the log records only: the logs stay JSON lines on stderr (shared/logs.py).
    LoggingInstrumentor().instrument(tracer_provider=provider, inject_trace_context=True,
                                     enable_log_auto_instrumentation=False)
    _tracer = provider.get_tracer("floodgate")
    if app is not None:
        from opentelemetry.instrumentation.flask import FlaskInstrumentor

        FlaskInstrumentor.instrument_app(app, excluded_urls=UNTRACED_PATHS, enable_commenter=False,
                                         tracer_provider=provider)
    log.info("tracing on", extra={"endpoint": settings.otel_exporter_otlp_endpoint})
    return True


# The propagator our own contexts are read with (outbox rows, AMQP headers): the global one as
# it was before `configure` put FromOurProcesses in front of it for requests.
_own_contexts = None


def _extract_own(carrier: Mapping) -> object:
    from opentelemetry import propagate

    return (_own_contexts or propagate.get_global_textmap()).extract(carrier)


class FromOurProcesses:
    """The propagator requests are read with: a request's trace context (`traceparent`,
    `tracestate`, baggage) is continued only when the request comes from one of our processes,
    which send the service key (`X-Service-Key`) along. Anyone else's starts a trace of our own,
    its id drawn here and sampled by OTEL_TRACES_SAMPLER's ratio: a client cannot have its
    requests traced (at the APIs' expense, on drop day too) by marking them sampled or by
    choosing trace ids the ratio samples. Injecting is the inner propagator's."""

    def __init__(self, inner, service_key: str):
        self._inner, self._key = inner, service_key

    def extract(self, carrier, context=None, getter=None):
        from opentelemetry.context import Context
        from opentelemetry.propagators.textmap import default_getter

        from shared.auth import is_service_key

        getter = getter or default_getter
        presented = getter.get(carrier, "x-service-key") or [""]
        if is_service_key(presented[0], self._key):
            return self._inner.extract(carrier, context, getter)
        return context if context is not None else Context()

    def inject(self, carrier, context=None, setter=None):
        from opentelemetry.propagators.textmap import default_setter

        self._inner.inject(carrier, context, setter or default_setter)

    @property
    def fields(self) -> set[str]:
        return self._inner.fields


def sampler():
    """The sampler OTEL_TRACES_SAMPLER names (default: every trace, and whatever the caller
    decided for a child), except that a client span without a parent (a SQL statement or an HTTP
    call of a loop's own, outside any work) is never recorded."""
    from opentelemetry.sdk.trace import sampling
    from opentelemetry.trace import SpanKind, get_current_span

    class WorkOnly(sampling.Sampler):
        def __init__(self, delegate: sampling.Sampler):
            self._delegate = delegate

        def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None,
                          trace_state=None):
            if kind == SpanKind.CLIENT and not get_current_span(parent_context).get_span_context().is_valid:
                return sampling.SamplingResult(sampling.Decision.DROP)
            return self._delegate.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

        def get_description(self) -> str:
            return f"WorkOnly{{{self._delegate.get_description()}}}"

    return WorkOnly(sampling._get_from_env_or_default())


@contextlib.contextmanager
def span(name: str, kind: str = "internal", attributes: Mapping[str, Any] | None = None,
         links: Iterable[object] = ()) -> Iterator[object]:
    """A span around the block, current inside it (a child of the current one); `kind` is
    `internal`, `client`, `server`, `producer` or `consumer`; `links`: spans this one also serves
    (as `span` yielded them; None is skipped). Without tracing, nothing (None)."""
    if _tracer is None:
        yield None
        return
    from opentelemetry.trace import Link, SpanKind

    linked = [Link(other.get_span_context()) for other in links if other is not None]
    with _tracer.start_as_current_span(name, kind=SpanKind[kind.upper()], attributes=attributes,
                                       links=linked) as current:
        yield current


def tag_order(order_id: str) -> None:
    """Name the order the current span works on (`floodgate.order_id`), to find its traces by it."""
    if _tracer is None:
        return
    from opentelemetry.trace import get_current_span

    get_current_span().set_attribute("floodgate.order_id", str(order_id))


def outbox_context(event_type: str, event_id: str, source: str) -> dict[str, str] | None:
    """The trace context an outbox row keeps (None without tracing): that of a `create <event>`
    span, a child of the work writing the event, which the relay's publish continues."""
    if _tracer is None:
        return None
    from opentelemetry import propagate

    with span(f"create {event_type}", "producer", {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.operation.type": "create",
        "messaging.destination.name": event_type,
        "messaging.message.id": event_id,
        "floodgate.outbox.service": source,
    }):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return carrier


@contextlib.contextmanager
def publishing(messages: Sequence[tuple[str, str, Mapping | None]], exchange: str,
               service: str) -> Iterator[list[dict[str, str]]]:
    """For a batch about to be published from `service`'s outbox, given each message's (event type,
    message id, trace context its outbox row kept): the trace headers each message carries. With
    tracing, those of a `publish <event>` span per message, a child of the row's context, open until
    the block ends (the broker confirmed the batch; an error marks them failed); without, the row's
    context as it was kept (the process that wrote it may have been tracing)."""
    if _tracer is None:
        yield [dict(context) if context else {} for _, _, context in messages]
        return
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind

    spans = [
        _tracer.start_span(f"publish {event_type}", context=_extract_own(context or {}), kind=SpanKind.PRODUCER,
                           attributes={
                               "messaging.system": MESSAGING_SYSTEM,
                               "messaging.operation.type": "send",
                               "messaging.destination.name": exchange,
                               "messaging.rabbitmq.destination.routing_key": event_type,
                               "messaging.message.id": message_id,
                               "messaging.batch.message_count": len(messages),
                               "floodgate.outbox.service": service,
                           })
        for event_type, message_id, context in messages
    ]
    headers = []
    for each in spans:
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(each))
        headers.append(carrier)
    try:
        yield headers
    except BaseException as error:
        for each in spans:
            each.record_exception(error)
            failed(each, f"{type(error).__name__}: {error}")
        raise
    finally:
        for each in spans:
            each.end()


@contextlib.contextmanager
def consuming(event_type: str | None, message_id: str | None, headers: Mapping | None, queue: str,
              attempt: int = 1) -> Iterator[object]:
    """A `process <event>` span around the handling of delivery number `attempt` of a message, a
    child of the context its AMQP `headers` carry (`traceparent`, `tracestate`): the relay's publish
    (a retry is another span under the same one). Current inside the block. Without tracing,
    nothing (None)."""
    if _tracer is None:
        yield None
        return
    from opentelemetry.trace import SpanKind

    carrier = {name: _text(headers[name]) for name in ("traceparent", "tracestate") if headers and headers.get(name)}
    with _tracer.start_as_current_span(f"process {event_type or 'message'}", context=_extract_own(carrier),
                                       kind=SpanKind.CONSUMER, attributes={
                                           "messaging.system": MESSAGING_SYSTEM,
                                           "messaging.operation.type": "process",
                                           "messaging.destination.name": queue,
                                           "messaging.rabbitmq.destination.routing_key": event_type or "",
                                           "messaging.message.id": message_id or "",
                                           "floodgate.attempt": attempt,
                                       }) as current:
        yield current


def failed(current, reason: str) -> None:
    """Mark `current` (a span from here, or None) failed, with why."""
    if current is None:
        return
    from opentelemetry.trace import Status, StatusCode

    current.set_status(Status(StatusCode.ERROR, reason[:500]))


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
