"""The outbox relay: publishes committed events with publisher confirms, then marks them sent.

Run one or more per service: `python -m services.<service> relay`. Rows are claimed with
`FOR UPDATE SKIP LOCKED`, so replicas share the work. A row is marked sent only after the broker
confirmed it; a crash in between republishes the row, which consumers drop by message id.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time

import pika
import sqlalchemy as sa

from shared import tracing
from shared.config import Settings, lower_priority
from shared.heartbeat import Heartbeat
from shared.last_seen import LastSeen
from shared.messaging import connection as amqp
from shared.messaging import topology
from shared.messaging.envelope import Envelope
from shared.messaging.outbox import OUTBOX
from shared.messaging.publisher import ConfirmedPublisher

log = logging.getLogger("floodgate.relay")
RETENTION = "1 day"
IDLE_FLOOR_SECONDS = 0.005


class OutboxRelay:
    """Publishes a service's pending outbox rows to the events exchange, oldest first."""

    def __init__(self, settings: Settings, engine: sa.Engine, process: str, stop: threading.Event | None = None):
        self.settings = settings
        self.process = process  # its name on the broker connection and its thread's
        self.engine = engine
        self.stop = stop or threading.Event()
        self.published = 0
        # Beaten only once a batch was read, so while the broker or the database is away the
        # pod is not ready and the service's `worker_heartbeats` row ages, and the outage shows;
        # it stays alive meanwhile (`reconnects`).
        self.heartbeat = Heartbeat(settings.heartbeat_file, LastSeen(engine, "relay"))
        self.reconnects = amqp.Reconnects(self.stop, settings.heartbeat_file, log)
        self._last_purge = 0.0
        self.failed = False

    def run(self) -> None:
        """Publish until asked to stop, reconnecting with capped back-off (`amqp.Reconnects`);
        anything else it cannot recover from is logged and ends it (`failed`)."""
        try:
            self._run()
        except BaseException:
            self.failed = True
            log.exception("relay failed")
            raise

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn = amqp.connect(
                    self.settings.amqp_url, self.process, self.settings.amqp_heartbeat_seconds
                )
                try:
                    topology.declare(conn.channel(), self.settings.retry_delays_ms)
                    publisher = ConfirmedPublisher(conn)
                    log.info("relay connected")
                    self._pump(conn, publisher)
                finally:
                    if conn.is_open:
                        conn.close()
            except amqp.RECOVERABLE as error:
                self.reconnects.wait("broker unavailable, retrying", error)
            except sa.exc.SQLAlchemyError as error:
                # not only an OperationalError: a failover's read-only server (InternalError), a
                # connection the driver lost (InterfaceError), an exhausted pool (TimeoutError)
                # once let the thread die, and the service's events wait for a restart
                self.reconnects.wait("database unavailable, retrying", error)

    def _pump(self, conn: pika.BlockingConnection, publisher: ConfirmedPublisher) -> None:
        # Idle polls back off from 5 ms to `relay_idle_seconds`, so a quiet relay costs almost no
        # CPU and a busy one publishes within milliseconds of the commit. After a batch that was
        # not full, the relay waits `relay_batch_window_seconds` so that rows gather into the next
        # one: a batch costs the same few statements and one wait for confirms whatever its size.
        idle = IDLE_FLOOR_SECONDS
        while not self.stop.is_set():
            published = self.publish_batch(publisher)
            if published:
                idle = IDLE_FLOOR_SECONDS
                if published < self.settings.relay_batch_size:
                    conn.process_data_events(time_limit=self.settings.relay_batch_window_seconds)
            else:
                self._purge_old()
                # process_data_events answers heartbeats while idle
                conn.process_data_events(time_limit=idle)
                idle = min(self.settings.relay_idle_seconds, idle * 2)
            # A turn both the database and the broker answered (confirms, or a read of the socket)
            self.heartbeat.beat()
            self.reconnects.worked()

    def publish_batch(self, publisher: ConfirmedPublisher) -> int:
        """Publish one batch of pending rows; returns how many were published."""
        with self.engine.begin() as tx:
            rows = tx.execute(_PENDING, {"limit": self.settings.relay_batch_size}).all()
            if not rows:
                return 0
            envelopes = [Envelope.from_dict(row.envelope) for row in rows]
            # One `publish` span a message, under the trace of the work that wrote its row, open
            # until the batch is confirmed; each message carries its span's context to the consumers.
            traced = [(envelope.type, envelope.id, row.trace_context) for envelope, row in zip(envelopes, rows)]
            with tracing.publishing(traced, topology.EVENTS_EXCHANGE, self.settings.service_name) as trace_contexts:
                # Returns once the broker has confirmed every message (persisted in the quorum
                # queues); a nack or an unroutable message raises and the rows stay pending.
                publisher.publish(_message(*each) for each in zip(envelopes, rows, trace_contexts))
            if self.settings.fault_relay_exit_after_publish:
                log.error("fault injection: exiting after publish, before marking sent", extra={"rows": len(rows)})
                logging.shutdown()
                os._exit(3)
            tx.execute(_MARK_SENT, {"ids": [row.id for row in rows]})
        self.published += len(rows)
        log.info("published", extra={"count": len(rows), "total": self.published})
        return len(rows)

    def _purge_old(self) -> None:
        if time.monotonic() - self._last_purge < 60:
            return
        self._last_purge = time.monotonic()
        with self.engine.begin() as tx:
            tx.execute(
                sa.delete(OUTBOX).where(
                    OUTBOX.c.published_at < sa.func.now() - sa.text(f"interval '{RETENTION}'")
                )
            )


_PENDING = (
    sa.select(OUTBOX.c.id, OUTBOX.c.envelope, OUTBOX.c.request_id, OUTBOX.c.trace_context)
    .where(OUTBOX.c.published_at.is_(None))
    .order_by(OUTBOX.c.id)
    .limit(sa.bindparam("limit"))
    .with_for_update(skip_locked=True)
)
_MARK_SENT = sa.text("UPDATE outbox SET published_at = now() WHERE id = ANY(:ids)")


def _message(envelope: Envelope, row, trace_context: dict) -> tuple[str, str, bytes, pika.BasicProperties]:
    return (topology.EVENTS_EXCHANGE, envelope.type, envelope.to_json(),
            envelope.properties(request_id=row.request_id, trace_context=trace_context))


def run(roots) -> None:
    """Relay the outbox of each root (`shared.service.Root`) until SIGTERM: a thread and a broker
    connection each. In Kubernetes a relay process serves one service
    (`python -m services.<service> relay`); the local stack relays every outbox from one process
    to save memory (`devtools/relays.py`)."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    lower_priority(roots[0].settings)
    relays = [OutboxRelay(root.settings, root.engine, root.process, stop) for root in roots]
    threads = [threading.Thread(target=relay.run, name=relay.process) for relay in relays]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        for thread in threads:
            thread.join(timeout=0.5)
        if not stop.is_set() and not all(thread.is_alive() for thread in threads):
            # a relay died of what it does not recover from: the process ends, and is restarted,
            # rather than go on without that service's events (the local stack relays them all)
            log.error("a relay stopped unasked; stopping the others",
                      extra={"stopped": [t.name for t in threads if not t.is_alive()]})
            stop.set()
    for root in roots:
        root.close()
    if any(relay.failed for relay in relays):
        raise SystemExit(1)
    log.info("relay stopped")
