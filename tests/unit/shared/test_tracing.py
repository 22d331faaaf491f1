"""The trace context carried by hand across the outbox and the broker (shared/tracing.py): off, it
costs nothing and passes a stored context on untouched; on, the outbox row, the relay's publish and
the consumer's handling are one chain of spans, and a log line names the span it was written in.

The spans go to an in-memory exporter of a tracer provider of the test's own (the process's global
one, and the instrumentations, stay untouched)."""
from __future__ import annotations

import json
import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from shared import logs, tracing
from shared.config import Settings


@pytest.fixture
def spans(monkeypatch):
    """Tracing on for the test; the finished spans, in the order they ended."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=tracing.sampler())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_tracer", provider.get_tracer("test"))
    yield exporter.get_finished_spans
    provider.shutdown()


def test_off_nothing_is_recorded_and_a_stored_context_passes_through_untouched():
    assert not tracing.configure("checkout-api", Settings())
    assert not tracing.enabled()
    assert tracing.outbox_context("order.placed", "e1", "checkout") is None
    stored = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    with tracing.publishing([("order.placed", "e1", stored), ("order.placed", "e2", None)], "events", "checkout") as sent:
        assert sent == [stored, {}]
    with tracing.consuming("order.placed", "e1", stored, "notifications.work") as span:
        assert span is None
        tracing.failed(span, "retry")
    with tracing.span("smtp send", "client") as span:
        assert span is None


def test_the_outbox_row_the_publish_and_the_handling_are_one_chain(spans):
    with tracing.span("POST /orders", "server") as request:
        stored = tracing.outbox_context("order.placed", "e1", "checkout")
    assert set(stored) == {"traceparent"}
    with tracing.publishing([("order.placed", "e1", stored)], "floodgate.events", "checkout") as [headers]:
        pass
    # what pika hands the consumer: the headers as published, beside our own
    with tracing.consuming("order.placed", "e1", {"x-attempt": 0, **headers}, "notifications.work", attempt=2):
        with tracing.span("smtp send", "client"):
            pass

    create, server, publish, smtp, process = spans()
    assert [s.name for s in (server, create, publish, process, smtp)] == [
        "POST /orders", "create order.placed", "publish order.placed", "process order.placed", "smtp send"]
    assert {s.context.trace_id for s in spans()} == {request.get_span_context().trace_id}
    assert create.parent.span_id == server.context.span_id
    assert publish.parent.span_id == create.context.span_id
    assert process.parent.span_id == publish.context.span_id
    assert smtp.parent.span_id == process.context.span_id
    assert [s.kind for s in (create, publish, process)] == [SpanKind.PRODUCER, SpanKind.PRODUCER, SpanKind.CONSUMER]
    assert publish.attributes["messaging.message.id"] == "e1"
    assert process.attributes["floodgate.attempt"] == 2


def test_a_batch_the_broker_refused_marks_each_publish_failed(spans):
    with pytest.raises(ConnectionError):
        with tracing.publishing([("order.placed", "e1", None), ("order.confirmed", "e2", None)], "events", "checkout"):
            raise ConnectionError("nack")
    assert [(s.name, s.status.status_code) for s in spans()] == [
        ("publish order.placed", StatusCode.ERROR), ("publish order.confirmed", StatusCode.ERROR)]


def test_a_message_without_a_context_starts_a_trace_and_a_failed_handling_says_so(spans):
    with tracing.consuming("reservation.expired", "e1", {"traceparent": b"not a traceparent"}, "checkout.work") as span:
        tracing.failed(span, "retry: TimeoutError()")
    [process] = spans()
    assert process.parent is None
    assert process.status.status_code == StatusCode.ERROR and process.status.description == "retry: TimeoutError()"


def test_a_loop_s_own_queries_make_no_trace_but_work_s_do(spans):
    with tracing.span("SELECT outbox", "client"):  # a relay's poll
        pass
    with tracing.span("process order.placed", "consumer"):
        with tracing.span("SELECT outbox", "client"):
            pass
    assert [s.name for s in spans()] == ["SELECT outbox", "process order.placed"]


def test_a_span_names_the_order_it_works_on(spans):
    with tracing.span("POST /payments/webhook", "server"):
        logs.bind_order_id("0c1f")
    with tracing.span("process order.confirmed", "consumer"), logs.log_context(order_id="0c2e"):
        pass
    assert [s.attributes["floodgate.order_id"] for s in spans()] == ["0c1f", "0c2e"]


def test_a_log_line_written_in_a_span_names_it_and_one_outside_none(spans, capsys):
    from opentelemetry.instrumentation.logging import LoggingInstrumentor

    logs.configure("checkout-api")
    LoggingInstrumentor().instrument(inject_trace_context=True, enable_log_auto_instrumentation=False)
    try:
        with tracing.span("POST /orders", "server") as request:
            logging.getLogger("floodgate.test").info("inside")
        logging.getLogger("floodgate.test").info("outside")
    finally:
        LoggingInstrumentor().uninstrument()
    inside, outside = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    context = request.get_span_context()
    assert (inside["trace_id"], inside["span_id"]) == (f"{context.trace_id:032x}", f"{context.span_id:016x}")
    assert "trace_id" not in outside and "span_id" not in outside
    assert not any(key.startswith("otel") for key in (*inside, *outside))



SERVICE_KEY = "test-service-key"


def _requests(sampler_name: str, ratio: str, monkeypatch, **headers) -> list:
    """64 requests as Flask's instrumentation starts them (the context read from the WSGI
    environ by the global propagator, as `configure` sets it), each sent a traceparent marked
    sampled whose trace id has the low bits a ratio samples (an attacker's choice), plus
    `headers`: (recorded, its trace id, the trace id sent) for each."""
    from opentelemetry.context import Context
    from opentelemetry.instrumentation.wsgi import wsgi_getter
    from opentelemetry.propagate import get_global_textmap

    monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler_name)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", ratio)
    tracer = TracerProvider(sampler=tracing.sampler()).get_tracer("test")
    propagator = tracing.FromOurProcesses(get_global_textmap(), SERVICE_KEY)
    seen = []
    for n in range(64):
        sent = (n + 1) << 64  # random-looking high bits, low 64 bits zero: sampled at any ratio
        environ = {"HTTP_TRACEPARENT": f"00-{sent:032x}-00f067aa0ba902b7-01",
                   **{f"HTTP_{name.upper()}": value for name, value in headers.items()}}
        span = tracer.start_span("POST /orders", context=propagator.extract(environ, Context(), wsgi_getter),
                                 kind=SpanKind.SERVER)
        seen.append((span.is_recording(), span.get_span_context().trace_id, sent))
        span.end()
    return seen


def test_a_clients_trace_context_is_not_continued_nor_decides_whether_its_request_is_recorded(monkeypatch):
    # a client that marks every request sampled, with trace ids the ratio would sample, gets the
    # ratio's share of its requests recorded, each in a trace of ours
    seen = _requests("parentbased_traceidratio", "0.25", monkeypatch)
    assert all(trace_id != sent for _, trace_id, sent in seen)
    assert 4 <= sum(recorded for recorded, _, _ in seen) <= 32
    forged = _requests("parentbased_traceidratio", "0", monkeypatch, x_service_key="a guess")
    assert not any(recorded for recorded, _, _ in forged) and all(t != sent for _, t, sent in forged)


def test_a_call_from_one_of_our_processes_continues_its_callers_trace_and_decision(monkeypatch):
    # checkout's call to inventory carries the service key: inventory records what checkout did
    seen = _requests("parentbased_traceidratio", "0", monkeypatch, x_service_key=SERVICE_KEY)
    assert all(recorded and trace_id == sent for recorded, trace_id, sent in seen)


def test_a_message_follows_the_decision_of_the_work_that_sent_it(monkeypatch):
    # an event's context was written by one of our processes (the outbox row), which decided
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")  # no new trace recorded
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=tracing.sampler())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_tracer", provider.get_tracer("test"))
    for flags in (0x01, 0x00):
        headers = {"traceparent": f"00-{2**100:032x}-00f067aa0ba902b7-{flags:02x}"}
        with tracing.consuming("order.placed", "e1", headers, "notifications.work"):
            pass
    [recorded] = exporter.get_finished_spans()
    assert recorded.context.trace_id == 2**100 and recorded.parent.span_id == 0x00f067aa0ba902b7
