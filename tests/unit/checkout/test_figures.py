"""A drop's figures on checkout's side for the control room: its orders by status and how fast
they come (from the orders' tally), and the answers to POST /orders as this pod's processes
counted them. The orders and the Prometheus registry stand in: no database."""
from __future__ import annotations

import uuid

from prometheus_client import CollectorRegistry, Counter

from services.checkout import figures

DROP = uuid.UUID("5f0d7c7e-8a43-4b0b-a1a4-0c8c1d2e3f40")


class TalliedOrders:
    def __init__(self, tally):
        self.tally_rows, self.asked = tally, []

    def tally(self, drop_id, recent_seconds):
        self.asked.append((drop_id, recent_seconds))
        return dict(self.tally_rows)


class FakeUnitOfWork:
    def __init__(self, tally):
        self.orders = TalliedOrders(tally)


def test_a_drops_orders_by_status_and_how_many_were_placed_a_second_lately():
    uow = FakeUnitOfWork({"awaiting_payment": (3, 2), "confirmed": (12, 3), "expired": (1, 0)})

    orders = figures.drop_orders(uow, DROP, window_seconds=10)

    assert orders["by_status"] == {"awaiting_payment": 3, "confirmed": 12, "expired": 1}
    assert orders["total"] == 16
    assert orders["placed_per_second"] == 0.5  # 5 placed in the last 10 s, whatever they became
    assert uow.orders.asked == [(DROP, 10)]


def test_a_drop_without_orders_has_zeros():
    orders = figures.drop_orders(FakeUnitOfWork({}), DROP)
    assert (orders["by_status"], orders["total"], orders["placed_per_second"]) == ({}, 0, 0)


def counted(*answers) -> CollectorRegistry:
    """A registry whose HTTP counter holds `answers`: (service, method, route, status, count)."""
    registry = CollectorRegistry()
    requests = Counter("floodgate_http_requests_total", "HTTP requests served",
                       ["service", "method", "route", "status"], registry=registry)
    for service, method, route, status, times in answers:
        requests.labels(service, method, route, status).inc(times)
    return registry


def test_the_answers_to_orders_are_counted_by_status_and_nothing_else_is():
    registry = counted(("checkout", "POST", "/orders", 201, 40), ("checkout", "POST", "/orders", 409, 7),
                       ("checkout", "POST", "/orders", 429, 120), ("checkout", "POST", "/orders", 503, 2),
                       ("checkout", "GET", "/orders", 200, 9), ("checkout", "POST", "/payments/webhook", 200, 40),
                       ("inventory", "POST", "/orders", 201, 1))

    assert figures.order_answers("checkout", registry) == {"201": 40, "409": 7, "429": 120, "503": 2}


def test_before_any_order_there_are_no_answers():
    assert figures.order_answers("checkout", counted()) == {}
