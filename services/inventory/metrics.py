"""Inventory's figures for /metrics, read from its database when Prometheus scrapes the API.

- `floodgate_inventory_hold_expiries_total{drop_id}`: holds of a drop the sweeper released because
  their time ran out (a counter: `drops.holds_expired` only grows), for the drops open now or
  closed within the last day. Many at once mean buyers hold units and do not pay: the payment
  provider or its webhooks failing, or a hold time too short for the payment page.
"""
from __future__ import annotations

from typing import Callable, Iterable

import sqlalchemy as sa
from prometheus_client.core import CounterMetricFamily, Metric

from shared import db

RECENT = "1 day"
_EXPIRIES = sa.text(
    f"SELECT id, holds_expired FROM drops WHERE closes_at > now() - interval '{RECENT}' ORDER BY id"
)


def hold_expiry_figures(engine: sa.Engine, timeout_seconds: float) -> Callable[[], Iterable[Metric]]:
    """A source (`shared.metrics.ScrapedFigures`) of each recent drop's count of expired holds."""

    def read() -> list[Metric]:
        expiries = CounterMetricFamily("floodgate_inventory_hold_expiries",
                                       "Holds the sweeper released because their time ran out", labels=["drop_id"])
        for row in db.read_briefly(engine, _EXPIRIES, timeout_seconds):
            expiries.add_metric([str(row.id)], int(row.holds_expired))
        return [expiries]

    return read
