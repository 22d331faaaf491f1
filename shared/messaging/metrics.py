"""Sources of scraped figures (`shared.metrics.ScrapedFigures`) about a service's events: its
outbox backlog, read from its database, and its dead letters, read from the broker.

- `floodgate_outbox_pending{service}`: outbox rows not yet published;
- `floodgate_outbox_oldest_pending_age_seconds{service}`: how long the oldest of them has waited
  (0 when none waits): the relays are stopped, or cannot keep up, when it grows;
- `floodgate_dead_letters{service}`: messages parked in the service's dead-letter queue, waiting
  for an admin to replay them (`python -m shared.messaging.dead_letters`).
"""
from __future__ import annotations

from typing import Callable, Iterable

import pika
import sqlalchemy as sa
from prometheus_client.core import GaugeMetricFamily, Metric

from shared import db
from shared.config import Settings
from shared.messaging import connection as amqp
from shared.messaging import topology

# The pending rows are the partial index `outbox_pending` (id WHERE published_at IS NULL): the
# count reads that index, the oldest row is its first entry.
_OUTBOX_BACKLOG = sa.text(
    "SELECT (SELECT count(*) FROM outbox WHERE published_at IS NULL) AS pending, "
    "(SELECT extract(epoch FROM now() - created_at) FROM outbox WHERE published_at IS NULL "
    "ORDER BY id LIMIT 1) AS oldest_age"
)


def outbox_figures(service: str, engine: sa.Engine, timeout_seconds: float) -> Callable[[], Iterable[Metric]]:
    """A source of `service`'s outbox backlog: rows waiting for a relay and the oldest one's age."""

    def read() -> list[Metric]:
        row = db.read_briefly(engine, _OUTBOX_BACKLOG, timeout_seconds)[0]
        pending = GaugeMetricFamily("floodgate_outbox_pending", "Outbox rows not yet published", labels=["service"])
        pending.add_metric([service], int(row.pending))
        oldest = GaugeMetricFamily("floodgate_outbox_oldest_pending_age_seconds",
                                   "Seconds the oldest unpublished outbox row has waited (0: none waits)",
                                   labels=["service"])
        oldest.add_metric([service], max(0.0, float(row.oldest_age or 0.0)))
        return [pending, oldest]

    return read


def dead_letters_family(service: str, parked: int) -> GaugeMetricFamily:
    """`floodgate_dead_letters{service}`: the messages parked in `service`'s dead-letter queue."""
    family = GaugeMetricFamily("floodgate_dead_letters", "Messages parked in the service's dead-letter queue",
                               labels=["service"])
    family.add_metric([service], parked)
    return family


def queue_depths(settings: Settings, queues: list[str], timeout_seconds: float) -> dict[str, int]:
    """Messages ready in each of `queues`, by passive declares (which change nothing) on one
    short connection; a queue not declared yet holds nothing."""
    connection = amqp.connect(settings.amqp_url, f"{settings.service_name}-metrics", heartbeat=0,
                              socket_timeout=timeout_seconds)
    depths = {}
    try:
        channel = connection.channel()
        for queue in queues:
            try:
                depths[queue] = channel.queue_declare(queue, passive=True).method.message_count
            except pika.exceptions.ChannelClosedByBroker:  # not declared yet: nothing waits there
                depths[queue] = 0
                channel = connection.channel()
    finally:
        if connection.is_open:
            connection.close()
    return depths


def dead_letter_figures(settings: Settings, timeout_seconds: float,
                        depths: Callable[[Settings, list[str], float], dict[str, int]] = queue_depths,
                        ) -> Callable[[], Iterable[Metric]]:
    """A source of the number of dead letters of the service `settings` name (a consuming one)."""
    service = settings.service_name
    queue = topology.dead_letter_queue(service)

    def read() -> list[Metric]:
        return [dead_letters_family(service, depths(settings, [queue], timeout_seconds)[queue])]

    return read
