"""The outbox relay's reconnect loop, against a fake broker and a fake database. No network."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from shared.config import Settings
from shared.heartbeat import reconnecting_file
from shared.messaging.relay import OutboxRelay
from tests.unit.shared.fake_broker import GIVE_UP_SECONDS, QueueBroker, counted_pauses, eventually
from tests.unit.shared.fake_database import FakeEngine


class ConfirmingPublisher:
    """Every message confirmed at once (the relay's `ConfirmedPublisher` drives pika's own channel)."""

    def __init__(self, connection):
        self.published = []

    def publish(self, messages) -> int:
        self.published += list(messages)
        return len(self.published)


@contextmanager
def relay_running(monkeypatch, broker: QueueBroker, engine: FakeEngine, heartbeat: Path):
    monkeypatch.setattr("shared.messaging.connection.connect", broker.connect)
    monkeypatch.setattr("shared.messaging.relay.ConfirmedPublisher", ConfirmingPublisher)
    relay = OutboxRelay(Settings(service_name="checkout", heartbeat_file=str(heartbeat)), engine, "checkout-relay")
    thread = threading.Thread(target=relay.run, name="relay", daemon=True)
    thread.start()
    try:
        yield relay
    finally:
        relay.stop.set()
        thread.join(GIVE_UP_SECONDS)
    assert not thread.is_alive()


def test_while_the_broker_is_away_the_relay_is_alive_not_ready_and_the_service_s_row_ages(monkeypatch, tmp_path):
    """Restarting cannot bring the broker back; a rollout must not count the pod ready; the
    `worker_heartbeats` row keeps showing the outage (written by the beat that touches the
    readiness file, which never comes)."""
    broker, heartbeat = QueueBroker(), tmp_path / "heartbeat"
    broker.down = True

    with relay_running(monkeypatch, broker, FakeEngine(), heartbeat):
        eventually(Path(reconnecting_file(str(heartbeat))).exists, "a beat while reconnecting")

    assert not heartbeat.exists()


def test_while_the_database_is_away_the_relay_is_not_ready_and_waits_ever_longer(monkeypatch, tmp_path):
    """The broker answers, so a connection opens each time; the relay must neither count as ready
    (a rollout with a wrong DATABASE_URL would replace working relays) nor reconnect and declare the
    topology ten times a second."""
    pauses = counted_pauses(monkeypatch)
    broker, heartbeat = QueueBroker(), tmp_path / "heartbeat"
    engine = FakeEngine(error=sa.exc.OperationalError("SELECT", {}, ConnectionRefusedError("connection refused")))

    with relay_running(monkeypatch, broker, engine, heartbeat):
        eventually(lambda: len(broker.connections) >= 4, "four connections")

    assert pauses[:4] == [1, 2, 3, 4]  # one back-off, never started again
    assert Path(reconnecting_file(str(heartbeat))).exists()
    assert not heartbeat.exists()


@pytest.mark.parametrize("error", [
    sa.exc.InternalError("SELECT", {}, Exception("cannot execute SELECT FOR UPDATE in a read-only transaction")),
    sa.exc.InterfaceError("SELECT", {}, Exception("connection already closed")),
    sa.exc.TimeoutError("QueuePool limit of size 2 overflow 2 reached"),
], ids=["failover-read-only", "connection-lost", "pool-exhausted"])
def test_a_database_error_other_than_operational_is_waited_out_not_the_relays_end(monkeypatch, tmp_path, error):
    """The relay caught OperationalError alone: a failover's read-only server, a connection the
    driver lost or an exhausted pool ended its thread, and the service's events waited for a
    restart (locally, where one process relays every service, for good)."""
    pauses = counted_pauses(monkeypatch)
    broker, heartbeat = QueueBroker(), tmp_path / "heartbeat"

    with relay_running(monkeypatch, broker, FakeEngine(error=error), heartbeat) as relay:
        eventually(lambda: len(broker.connections) >= 3, "three connections")
        assert not relay.failed

    assert pauses[:2] == [1, 2]


def test_a_broker_that_drops_the_relay_at_once_is_tried_ever_more_slowly(monkeypatch, tmp_path):
    """The database answers (an empty outbox), the broker accepts the connection and drops it at
    the relay's first read: no turn of work, so the back-off is never started again."""
    pauses = counted_pauses(monkeypatch)
    broker, heartbeat = QueueBroker(), tmp_path / "heartbeat"
    connect = broker.connect

    def dropped_at_once(*args, **kwargs):
        connection = connect(*args, **kwargs)
        broker.lose(connection)
        return connection

    broker.connect = dropped_at_once
    with relay_running(monkeypatch, broker, FakeEngine(), heartbeat):
        eventually(lambda: len(pauses) >= 4, "four reconnect waits")

    assert pauses[:4] == [1, 2, 3, 4]
    assert not heartbeat.exists()


def test_once_a_batch_was_read_the_relay_is_ready(monkeypatch, tmp_path):
    broker, heartbeat = QueueBroker(), tmp_path / "heartbeat"

    with relay_running(monkeypatch, broker, FakeEngine(), heartbeat):
        eventually(heartbeat.exists, "the readiness beat")
