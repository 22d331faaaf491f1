"""Sources of scraped figures (`shared.metrics.ScrapedFigures`) about a service's events: its
outbox backlog, read from its database, and its dead letters, read from the broker.

- `floodgate_outbox_pending{service}`: outbox rows not yet published;
- `floodgate_outbox_oldest_pending_age_seconds{service}`: how long the oldest of them has waited
  (0 when none waits): the relays are stopped, or cannot keep up, when it grows;
- `floodgate_dead_letters{service}`: messages parked in the service's dead-letter queue, waiting
  for an admin to replay them (`python -m shared.messaging.dead_letters`).
"""
from __future__ import annotations

import os
import threading
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
    """Messages ready in each of `queues`, by passive declares (which change nothing); a queue not
    declared yet holds nothing. Read on the process's kept connection (`_KeptConnection`)."""
    return _kept.depths(settings, queues, timeout_seconds)


class _KeptConnection:
    """One broker connection a process reads queue depths on, opened at its first read and kept:
    each scrape (two a pod every interval where both annotations and a PodMonitor find it) and
    each control room's poll (every 2 s) opened and closed a connection of its own before, the
    connection churn RabbitMQ's documentation warns against. Reads take turns (a pika
    BlockingConnection serves one thread); a read that fails on the kept connection is tried
    once on a new one, and one that fails there too raises (the figure's source reports down)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._connection = None
        self._owner = None  # the process that opened it: a forked child opens its own

    def depths(self, settings: Settings, queues: list[str], timeout_seconds: float) -> dict[str, int]:
        with self._lock:
            while True:
                fresh = not self._usable()
                try:
                    return self._read(settings, queues, timeout_seconds)
                except amqp.RECOVERABLE:
                    self._drop()
                    if fresh:
                        raise
                    # the kept connection had gone (a broker restart, say): once more on a new one

    def _usable(self) -> bool:
        return self._connection is not None and self._owner == os.getpid() and self._connection.is_open

    def _read(self, settings: Settings, queues: list[str], timeout_seconds: float) -> dict[str, int]:
        if not self._usable():
            self._connection = amqp.connect(settings.amqp_url, f"{settings.service_name}-metrics", heartbeat=0,
                                            socket_timeout=timeout_seconds)
            self._owner = os.getpid()
        channel = self._connection.channel()
        depths = {}
        try:
            for queue in queues:
                try:
                    depths[queue] = channel.queue_declare(queue, passive=True).method.message_count
                except pika.exceptions.ChannelClosedByBroker:  # not declared yet: nothing waits there
                    depths[queue] = 0
                    channel = self._connection.channel()
        finally:
            if channel.is_open:
                channel.close()
        return depths

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and self._owner == os.getpid():
            try:
                if connection.is_open:
                    connection.close()
            except amqp.RECOVERABLE:
                pass


_kept = _KeptConnection()


def dead_letter_figures(settings: Settings, timeout_seconds: float,
                        depths: Callable[[Settings, list[str], float], dict[str, int]] = queue_depths,
                        ) -> Callable[[], Iterable[Metric]]:
    """A source of the number of dead letters of the service `settings` name (a consuming one)."""
    service = settings.service_name
    queue = topology.dead_letter_queue(service)

    def read() -> list[Metric]:
        return [dead_letters_family(service, depths(settings, [queue], timeout_seconds)[queue])]

    return read
