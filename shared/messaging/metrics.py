"""Sources of scraped figures (`shared.metrics.ScrapedFigures`) about a service's events: its
outbox backlog, read from its database, and its dead letters, read from the broker.

- `floodgate_outbox_pending{service}`: outbox rows not yet published;
- `floodgate_outbox_oldest_pending_age_seconds{service}`: how long the oldest of them has waited
  (0 when none waits): the relays are stopped, or cannot keep up, when it grows;
- `floodgate_dead_letters{service}`: messages parked in the service's dead-letter queue, waiting
  for an admin to replay them (`python -m shared.messaging.dead_letters`);
- `floodgate_events_waiting{service}`: messages ready in the service's work queue, waiting for its
  consumer (refunds and expiries in checkout's, sales and releases in inventory's): a backlog
  that does not drain says the consumer is stopped or cannot keep up.
- `floodgate_events_retrying{service}`: messages in the service's retry tiers, failed and waiting
  for their next attempt: a refund the payment provider cannot take waits there up to a day
  (`PartnerDown`) before it is parked, so that is where a provider outage shows.
"""
from __future__ import annotations

import os
import threading
import time
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
    declared yet holds nothing. Read on the process's kept connection (`_KeptConnection`) within
    `timeout_seconds`; raises `BrokerDidNotAnswer` past it, or when an earlier read of this
    process still waits for the broker after OVERLAP_WAIT_SECONDS."""
    return _kept.depths(settings, queues, timeout_seconds)


class BrokerDidNotAnswer(TimeoutError):
    """The broker did not answer a read of queue depths within its deadline, or an earlier read of
    the same process still waits for it: the figure's source reports down."""


# Heartbeats end a read the broker stopped answering (a node that died without closing TCP): the
# waiting call runs pika's loop, whose heartbeat checker closes a connection silent for one to two
# heartbeat timeouts plus 5 s each, about a minute here, where TCP alone gave up after 15 minutes.
# They also let the broker close its side of a connection this process gave up on. Scrapes every
# 15 s keep the kept connection alive; a process read less than once a minute has it closed by the
# broker meanwhile and opens a new one at its next read, as every read did before it was kept.
_HEARTBEAT_SECONDS = 30
# How long a read waits for another of the same process under way, before it reports the broker down.
OVERLAP_WAIT_SECONDS = 0.5


class _KeptConnection:
    """One broker connection a process reads queue depths on, opened at its first read and kept:
    each scrape (two a pod every interval where both annotations and a PodMonitor find it) and
    each control room's poll (every 2 s) opened and closed a connection of its own before, the
    connection churn RabbitMQ's documentation warns against. A read that fails on the kept
    connection is tried once on a new one, and one that fails there too raises (the figure's
    source reports down).

    A broker node that dies without closing TCP (a crash, a partition) answers nothing, and a
    pika BlockingConnection waits for an answer with no deadline (its socket timeout bounds the
    TCP connect only). So a read runs on a thread of its own and its caller, an API's request
    thread, waits for it until the deadline and no longer. The reader waits on until the broker
    answers or the connection's heartbeat gives up on it (about a minute), and a read asked for
    meanwhile reports the broker down after OVERLAP_WAIT_SECONDS (a read the broker answers
    takes milliseconds) instead of queueing behind it: at most one thread of a process (the
    reader) waits for the broker, and a request thread half a second at most. (Before, each
    scrape's request thread queued on a lock behind a read waiting for TCP to give up: within
    minutes an API's 24 threads were all there, and buyers' requests behind them.)"""

    def __init__(self):
        self._reading = threading.Lock()  # held from a read's start until its reader ends
        self._connection = None
        self._owner = None  # the process that opened it: a forked child opens its own

    def depths(self, settings: Settings, queues: list[str], timeout_seconds: float) -> dict[str, int]:
        deadline = time.monotonic() + timeout_seconds
        # A read under way (a scrape's, a control room's poll) takes milliseconds when the broker
        # answers: the next waits that long for it, OVERLAP_WAIT_SECONDS at most, rather than
        # report the broker down because two reads met (which the page showed as "unknown").
        if not self._reading.acquire(timeout=max(0.0, min(OVERLAP_WAIT_SECONDS, _left(deadline)))):
            raise BrokerDidNotAnswer("the broker has not answered this process's previous read yet")
        read = _Read()
        try:
            threading.Thread(target=self._read_then_release, args=(settings, queues, deadline, read),
                             name="broker-figures", daemon=True).start()
        except BaseException:
            self._reading.release()
            raise
        return read.outcome(deadline)

    def after_fork_in_child(self) -> None:
        """Forget the parent's read under way: its reader thread does not exist in the child."""
        self._reading = threading.Lock()

    def _read_then_release(self, settings: Settings, queues: list[str], deadline: float, read: _Read) -> None:
        try:
            read.answered(self._read_with_one_retry(settings, queues, deadline))
        except BaseException as error:
            read.failed(error)
        finally:
            self._reading.release()

    def _read_with_one_retry(self, settings: Settings, queues: list[str], deadline: float) -> dict[str, int]:
        while True:
            fresh = not self._usable()
            try:
                return self._read(settings, queues, deadline)
            except amqp.RECOVERABLE:
                self._drop()
                if fresh:
                    raise
                # the kept connection had gone (a broker restart, say): once more on a new one

    def _usable(self) -> bool:
        return self._connection is not None and self._owner == os.getpid() and self._connection.is_open

    def _read(self, settings: Settings, queues: list[str], deadline: float) -> dict[str, int]:
        if not self._usable():
            self._connection = amqp.connect(settings.amqp_url, f"{settings.service_name}-metrics",
                                            heartbeat=_HEARTBEAT_SECONDS, socket_timeout=_left(deadline))
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


def _left(deadline: float) -> float:
    """Seconds until `deadline`; raises `BrokerDidNotAnswer` when none are left."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise BrokerDidNotAnswer("no time left to read the broker")
    return left


class _Read:
    """The outcome of one read, handed from its reader thread to the request thread waiting for it."""

    def __init__(self):
        self._done = threading.Event()
        self._depths: dict[str, int] | None = None
        self._error: BaseException | None = None

    def answered(self, depths: dict[str, int]) -> None:
        self._depths = depths
        self._done.set()

    def failed(self, error: BaseException) -> None:
        self._error = error
        self._done.set()

    def outcome(self, deadline: float) -> dict[str, int]:
        """The depths read, or the reader's error; raises `BrokerDidNotAnswer` at `deadline`."""
        if not self._done.wait(max(0.0, deadline - time.monotonic())):
            raise BrokerDidNotAnswer("the broker did not answer within the metrics query timeout")
        if self._error is not None:
            raise self._error
        return self._depths


_kept = _KeptConnection()
os.register_at_fork(after_in_child=lambda: _kept.after_fork_in_child())


def dead_letter_figures(settings: Settings, timeout_seconds: float,
                        depths: Callable[[Settings, list[str], float], dict[str, int]] = queue_depths,
                        ) -> Callable[[], Iterable[Metric]]:
    """A source of the number of dead letters of the service `settings` name (a consuming one),
    and of the events waiting in its work queue, read together."""
    service = settings.service_name
    dead, waits = topology.dead_letter_queue(service), topology.waiting_queues(service)
    tiers = [topology.retry_queue(service, delay) for delay in topology.retry_delays(service, settings.retry_delays_ms)]

    def read() -> list[Metric]:
        depth = depths(settings, [dead, *waits, *tiers], timeout_seconds)
        waiting = GaugeMetricFamily("floodgate_events_waiting",
                                    "Messages ready in the service's work queue and its returned lane, waiting for "
                                    "its consumer", labels=["service"])
        waiting.add_metric([service], sum(depth[queue] for queue in waits))
        retrying = GaugeMetricFamily("floodgate_events_retrying",
                                     "Messages in the service's retry tiers, failed and waiting for their next attempt",
                                     labels=["service"])
        retrying.add_metric([service], sum(depth[tier] for tier in tiers))
        return [dead_letters_family(service, depth[dead]), waiting, retrying]

    return read
