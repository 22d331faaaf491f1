"""A drop's figures on checkout's side, for the control room (`GET /drops/{id}/figures`).

- Its orders by status and how many were placed a second lately: from the database, so every
  checkout pod's orders count.
- `POST /orders`' answers by status (201, 409, 429, 503, ...): what this pod's API processes
  counted in `floodgate_http_requests_total` (shared/metrics.py), read from their shared
  Prometheus directory. Not per drop (the counter has no drop label, and must not: one series per
  drop would grow without bound), not per deployment (another pod counts its own; Prometheus sums
  them), and only since this pod's processes started.
"""
from __future__ import annotations

import uuid
from collections import Counter

from prometheus_client import CollectorRegistry

from shared.metrics import this_pods_registry

ORDERS_PATH = "/orders"
# How far back "placed a second" looks: long enough to be steady between the page's 2 s polls.
PLACING_WINDOW_SECONDS = 10


def drop_orders(uow, drop_id: uuid.UUID, window_seconds: float = PLACING_WINDOW_SECONDS) -> dict:
    """The drop's orders: `by_status`, `total`, and `placed_per_second` over the last
    `window_seconds`."""
    tally = uow.orders.tally(drop_id, window_seconds)
    return {
        "by_status": {status: orders for status, (orders, _) in sorted(tally.items())},
        "total": sum(orders for orders, _ in tally.values()),
        "placed_per_second": sum(recent for _, recent in tally.values()) / window_seconds,
        "window_seconds": window_seconds,
    }


def order_answers(service: str, registry: CollectorRegistry | None = None) -> dict[str, int]:
    """`POST /orders`' answers by HTTP status, as this pod's processes counted them (`registry`:
    theirs by default; see `shared.metrics.this_pods_registry`)."""
    counted: Counter = Counter()
    for family in (registry or this_pods_registry()).collect():
        for sample in family.samples:
            labels = sample.labels
            if (sample.name == "floodgate_http_requests_total" and labels.get("service") == service
                    and labels.get("method") == "POST" and labels.get("route") == ORDERS_PATH):
                counted[str(labels.get("status"))] += int(sample.value)
    return dict(sorted(counted.items()))
