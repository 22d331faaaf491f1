"""The outbox relay's reconnect loop, against a fake broker and a fake database. No network."""
from __future__ import annotations

import threading
import time
from pathlib import Path

from shared.config import Settings
from shared.heartbeat import reconnecting_file
from shared.messaging.relay import OutboxRelay
from tests.unit.shared.fake_broker import GIVE_UP_SECONDS, QueueBroker
from tests.unit.shared.fake_database import FakeEngine


def test_while_the_broker_is_away_the_relay_is_alive_not_ready_and_the_service_s_row_ages(monkeypatch, tmp_path):
    """Restarting cannot bring the broker back; a rollout must not count the pod ready; the
    `worker_heartbeats` row keeps showing the outage (written by the beat that touches the
    readiness file, which never comes)."""
    broker, engine, heartbeat = QueueBroker(), FakeEngine(), tmp_path / "heartbeat"
    reconnecting = Path(reconnecting_file(str(heartbeat)))
    broker.down = True
    monkeypatch.setattr("shared.messaging.connection.connect", broker.connect)
    relay = OutboxRelay(Settings(service_name="checkout", heartbeat_file=str(heartbeat)), engine, "checkout-relay")
    thread = threading.Thread(target=relay.run, name="relay", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + GIVE_UP_SECONDS
        while not reconnecting.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        relay.stop.set()
        thread.join(GIVE_UP_SECONDS)

    assert not thread.is_alive()
    assert reconnecting.exists()
    assert not heartbeat.exists()
