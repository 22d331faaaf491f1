"""The outbox relay's reconnect loop, against a fake broker and a fake database. No network."""
from __future__ import annotations

import threading
import time

from shared.config import Settings
from shared.messaging.relay import OutboxRelay
from tests.unit.shared.fake_broker import GIVE_UP_SECONDS, QueueBroker
from tests.unit.shared.fake_database import FakeEngine


def test_while_the_broker_is_away_the_liveness_file_is_touched_and_the_service_s_row_ages(monkeypatch, tmp_path):
    """Restarting cannot bring the broker back; the `worker_heartbeats` row keeps showing the outage."""
    broker, engine, heartbeat = QueueBroker(), FakeEngine(), tmp_path / "heartbeat"
    broker.down = True
    monkeypatch.setattr("shared.messaging.connection.connect", broker.connect)
    relay = OutboxRelay(Settings(service_name="checkout", heartbeat_file=str(heartbeat)), engine, "checkout-relay")
    thread = threading.Thread(target=relay.run, name="relay", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + GIVE_UP_SECONDS
        while not heartbeat.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        relay.stop.set()
        thread.join(GIVE_UP_SECONDS)

    assert not thread.is_alive()
    assert heartbeat.exists()
    assert engine.statements("INSERT") == []
