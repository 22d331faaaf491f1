"""One order followed across the stack by its traces (shared/tracing.py): a stack of its own exports
its spans over OTLP/HTTP to a collector in the test's process; one order is placed and paid; the
payment's trace runs, unbroken, from checkout's webhook through the inventory call, the outbox,
the relays and every consumer to the confirmation email, and so does the placement's from
`POST /orders` to its email. Every log line written inside a span names its trace."""
from __future__ import annotations

from pathlib import Path

import pytest

from devtools.client import Floodgate, poll
from tests.integration.conftest import running_stack
from devtools.otlp_collector import Collector, Span

# (process, span kind, span name): the name only where the process names the span itself; an
# HTTP span's name is its route, told by its `http.route`.
PAYMENT_TRACE = {
    ("checkout-api", "SERVER", "/payments/webhook"),
    ("checkout-api", "CLIENT", None),  # the sale, asked of inventory
    ("inventory-api", "SERVER", "/reservations/<order_id>/sell"),
    ("checkout-api", "PRODUCER", "create order.confirmed"),
    ("checkout-relay", "PRODUCER", "publish order.confirmed"),
    ("inventory-consumer", "CONSUMER", "process order.confirmed"),
    ("notifications-consumer", "CONSUMER", "process order.confirmed"),
    ("notifications-consumer", "CLIENT", "smtp send"),
    # the email announced to checkout, which shows it on the order
    ("notifications-consumer", "PRODUCER", "create email.sent"),
    ("notifications-relay", "PRODUCER", "publish email.sent"),
    ("checkout-consumer", "CONSUMER", "process email.sent"),
}
PLACEMENT_TRACE = {
    ("checkout-api", "SERVER", "/orders"),
    # the order waits for (or, alone, makes) the call its process's concurrent holds share
    ("checkout-api", "INTERNAL", "inventory hold"),
    ("checkout-api", "INTERNAL", "inventory hold batch"),
    ("inventory-api", "SERVER", "/reservations/batch"),
    ("checkout-api", "PRODUCER", "create order.placed"),
    ("checkout-relay", "PRODUCER", "publish order.placed"),
    ("notifications-consumer", "CONSUMER", "process order.placed"),
    ("notifications-consumer", "CLIENT", "smtp send"),
}


@pytest.fixture(scope="module")
def collector():
    with Collector() as running:
        yield running


@pytest.fixture(scope="module")
def traced_stack(infra, collector, tmp_path_factory):
    # a vhost of its own: on the session stack's, that stack's consumers would take half its events
    amqp_url, delete_vhost = infra.new_vhost()
    try:
        with running_stack(infra.postgres_url, amqp_url, Path(tmp_path_factory.mktemp("traced-stack")), extra_env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
            "OTEL_BSP_SCHEDULE_DELAY": "100",  # each process exports its spans within 0.1 s
        }) as stack:
            yield stack
    finally:
        delete_vhost()


@pytest.fixture(scope="module")
def paid_order(traced_stack):
    """An order placed and paid, confirmed, and its confirmation emailed and shown on the order."""
    floodgate = Floodgate(traced_stack)
    admin = floodgate.create_admin("admin@tracing.test", "admin password for tests")
    drop = floodgate.create_drop(admin, quantity=5)
    _, token = floodgate.register()
    placed = floodgate.place_order(token, drop["id"])
    assert placed.status_code == 201, placed.text
    order = placed.json()
    # paid once its "pay by" email is out: paid before, that email may come after the confirmation
    # and is then not sent at all (superseded), and the placement's trace would have no SMTP span
    poll(lambda: floodgate.mails_about(order["id"], "Pay"), what="the email asking for payment")
    assert floodgate.pay(order).status_code == 200
    floodgate.wait_for_status(token, order["id"], "confirmed")
    poll(lambda: floodgate.get_order(token, order["id"]).json()["email"]["confirmation_sent"],
         what="the order to show its confirmation email went out")
    return order


def matches(span: Span, process: str, kind: str, name: str | None) -> bool:
    if (span.process, span.kind) != (process, kind):
        return False
    if kind in ("SERVER", "CLIENT") and name is not None and name.startswith("/"):
        return span.attributes.get("http.route") == name
    return name is None or span.name == name


def trace_of_request(collector: Collector, route: str, order_id: str, event: str) -> str | None:
    """The trace of checkout's request to `route` about `order_id` that wrote `event` to the outbox
    (the provider calls the webhook once a step of the payment), once its spans are in."""
    spans = collector.spans()
    traces = {span.trace_id for span in spans
              if matches(span, "checkout-api", "SERVER", route) and span.attributes.get("floodgate.order_id") == order_id}
    for span in spans:
        if span.trace_id in traces and matches(span, "checkout-api", "PRODUCER", f"create {event}"):
            return span.trace_id
    return None


def whole_trace(collector: Collector, trace_id: str, expected: set) -> list[Span] | None:
    """The trace's spans once every `expected` one is in and each span's parent is too."""
    spans = collector.trace(trace_id)
    ids = {span.span_id for span in spans}
    if any(span.parent_id and span.parent_id not in ids for span in spans):
        return None
    if not all(any(matches(span, *wanted) for span in spans) for wanted in expected):
        return None
    return spans


def missing(collector: Collector, trace_id: str, expected: set) -> str:
    spans = collector.trace(trace_id)
    return (f"missing {[w for w in expected if not any(matches(s, *w) for s in spans)]}; "
            f"have {sorted((s.process, s.kind, s.name) for s in spans)}")


def test_one_trace_runs_from_the_payment_webhook_to_the_confirmation_email(traced_stack, collector, paid_order):
    trace_id = poll(lambda: trace_of_request(collector, "/payments/webhook", paid_order["id"], "order.confirmed"),
                    timeout=15, what="the webhook's span")
    try:
        spans = poll(lambda: whole_trace(collector, trace_id, PAYMENT_TRACE), timeout=20, what="the whole trace")
    except AssertionError as error:
        raise AssertionError(missing(collector, trace_id, PAYMENT_TRACE)) from error

    [root] = [span for span in spans if not span.parent_id]
    assert matches(root, "checkout-api", "SERVER", "/payments/webhook")
    by_id = {span.span_id: span for span in spans}

    def parent(span: Span) -> Span:
        return by_id[span.parent_id]

    # each hop is a child of the one before it, across processes
    [publish] = [s for s in spans if matches(s, "checkout-relay", "PRODUCER", "publish order.confirmed")]
    assert parent(publish).name == "create order.confirmed" and parent(publish).process == "checkout-api"
    for consumer in ("inventory-consumer", "notifications-consumer"):
        [process] = [s for s in spans if matches(s, consumer, "CONSUMER", "process order.confirmed")]
        assert parent(process) == publish
    [smtp] = [s for s in spans if matches(s, "notifications-consumer", "CLIENT", "smtp send")]
    assert parent(smtp).name == "process order.confirmed"
    [sale] = [s for s in spans if matches(s, "inventory-api", "SERVER", "/reservations/<order_id>/sell")]
    assert parent(sale).process == "checkout-api" and parent(sale).kind == "CLIENT"


def test_one_trace_runs_from_post_orders_to_the_email_asking_for_payment(traced_stack, collector, paid_order):
    trace_id = poll(lambda: trace_of_request(collector, "/orders", paid_order["id"], "order.placed"), timeout=15,
                    what="the order's span")
    try:
        poll(lambda: whole_trace(collector, trace_id, PLACEMENT_TRACE), timeout=20, what="the whole trace")
    except AssertionError as error:
        raise AssertionError(missing(collector, trace_id, PLACEMENT_TRACE)) from error
    spans = collector.trace(trace_id)
    [waiting] = [s for s in spans if matches(s, "checkout-api", "INTERNAL", "inventory hold")]
    [call] = [s for s in spans if matches(s, "checkout-api", "INTERNAL", "inventory hold batch")]
    # the shared call names every order it carries, this one's wait included
    assert waiting.span_id in call.links and call.parent_id == waiting.span_id


def test_log_lines_written_inside_a_span_name_its_trace(traced_stack, collector, paid_order):
    trace_id = poll(lambda: trace_of_request(collector, "/payments/webhook", paid_order["id"], "order.confirmed"),
                    timeout=15, what="the webhook's span")
    spans = {span.span_id: span for span in collector.trace(trace_id)}

    # the provider calls once a step (approved, then captured): each its own trace, the capture's
    # the payment's
    webhooks = [line for line in traced_stack.log_entries("checkout-api")
                if line.get("message") == "request" and line.get("path") == "/payments/webhook"]
    assert len(webhooks) >= 2 and all(line.get("trace_id") for line in webhooks)
    [capture] = [line for line in webhooks if line["trace_id"] == trace_id]
    assert matches(spans[capture["span_id"]], "checkout-api", "SERVER", "/payments/webhook")

    sent = poll(lambda: [line for line in traced_stack.log_entries("notifications-consumer")
                         if line.get("message") == "email sent" and line.get("event_type") == "order.confirmed"],
                what="the consumer's log line of the confirmation")
    assert [line["trace_id"] for line in sent] == [trace_id]
    # outside any span (a relay's loop, once a batch is confirmed) a line names no trace
    published = [line for line in traced_stack.log_entries("checkout-relay") if line.get("message") == "published"]
    assert published and not any("trace_id" in line for line in published)
