"""JSON structured logs that carry the request id (and the order id when one is known).

The request id comes from `X-Request-ID` or is minted at the edge; it travels in AMQP message
headers so a consumer's log lines share the id of the request that caused them. With tracing on
(`shared.tracing`), a line written inside a span also carries its `trace_id` and `span_id`.
"""
from __future__ import annotations

import contextvars
import logging
import re
import sys
import uuid
from contextlib import contextmanager
from typing import Iterator

from pythonjsonlogger.json import JsonFormatter

from shared import tracing

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
order_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("order_id", default=None)
_service_name = "floodgate"


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.service = _service_name
        record.request_id = request_id_var.get()
        order_id = order_id_var.get()
        if order_id and not hasattr(record, "order_id"):
            record.order_id = order_id
        if "otelTraceID" in record.__dict__:
            _trace_ids(record)
        return True


# What the logging instrumentation notes on every record (tracing on): the ids, under our names
# and only while a span is active ("0" otherwise), and nothing else of its.
_OTEL_FIELDS = ("otelTraceID", "otelSpanID", "otelTraceSampled", "otelServiceName")


def _trace_ids(record: logging.LogRecord) -> None:
    trace_id, span_id = record.__dict__["otelTraceID"], record.__dict__["otelSpanID"]
    for name in _OTEL_FIELDS:
        record.__dict__.pop(name, None)
    if trace_id != "0":
        record.trace_id, record.span_id = trace_id, span_id


# PostgreSQL's own message may hold a row's values ("DETAIL:  Key (email)=(ann@example.com) already
# exists", "Failing row contains (...)", a value's own line breaks included, "CONTEXT:  unnamed
# portal parameter $1 = '...'"); the engines hide the statement's parameters (shared/db.py), and
# these parts go too: from DETAIL or CONTEXT to SQLAlchemy's "[SQL: ...]" or "(Background ...)",
# a blank line or the end, whether the line breaks are real (a traceback) or escaped (a repr)
_VALUES_IN_MESSAGE = re.compile(
    r"(?:\\n|\n)(?:DETAIL|CONTEXT):  .*?"  # PostgreSQL's own: at a line's start, two spaces after
    r"(?=(?:\\n|\n)[ \t]*(?:\[SQL|\(Background|\\n|\n)|['\"]\)?\Z|\Z)", re.S)  # ... a blank line, a repr's end


def without_values(text: str) -> str:
    """`text` (an exception's message, repr or traceback) without PostgreSQL's parts that hold a
    row's values."""
    return _VALUES_IN_MESSAGE.sub("", text)


class _Formatter(JsonFormatter):
    """One JSON object a record; an exception's text without the parts that hold values."""

    def formatException(self, ei) -> str:
        return without_values(super().formatException(ei))


def configure(process: str, level: str = "INFO") -> None:
    """Send every log record to stderr as one JSON object per line, its `service` field naming
    the process (`checkout-api`, `inventory-consumer`, ...)."""
    global _service_name
    _service_name = process
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _Formatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s %(service)s %(request_id)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    )
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("pika", "urllib3"):
        logging.getLogger(noisy).setLevel("WARNING")


def new_request_id() -> str:
    """A fresh request id."""
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    """The request id of the work in hand, if any."""
    return request_id_var.get()


@contextmanager
def log_context(request_id: str | None = None, order_id: str | None = None, tag_span: bool = True) -> Iterator[None]:
    """Attach a request id and/or order id to every log line written inside the block (and the
    order id to the current span, unless `tag_span` is False: a span that works for several)."""
    tokens = []
    if request_id is not None:
        tokens.append((request_id_var, request_id_var.set(request_id)))
    if order_id is not None:
        tokens.append((order_id_var, order_id_var.set(order_id)))
        if tag_span:
            tracing.tag_order(order_id)
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def bind_order_id(order_id: str) -> None:
    """Attach `order_id` to the rest of the current request's or message's log lines (and to
    its span, when tracing)."""
    order_id_var.set(str(order_id))
    tracing.tag_order(order_id)
