"""A background sampler: the drop's remaining stock, the notifications queue and the checkout outbox."""
from __future__ import annotations

import threading
import time

import pika
import requests
import sqlalchemy as sa

from shared.config import Settings
from shared.messaging import connection as amqp
from shared.messaging.topology import retry_delays, retry_queue, work_queue


# the notifications consumer's tiers, as it declares them (with the rehearsal's environment)
RETRY_DELAYS_MS = retry_delays("notifications", Settings.from_env().retry_delays_ms)


class Sampler(threading.Thread):
    def __init__(self, rig, drop_id: str, interval: float = 0.5):
        super().__init__(name="sampler", daemon=True)
        self.rig, self.drop_id, self.interval = rig, drop_id, interval
        self.samples: list[dict] = []
        self.latest: dict = {}
        self._halt = threading.Event()
        self._http = requests.Session()
        self._amqp: pika.BlockingConnection | None = None
        self._checkout = sa.create_engine(rig.stack.infra.database_url("checkout"), pool_size=1, max_overflow=0)

    def run(self) -> None:
        while not self._halt.is_set():
            started = time.time()
            depth = self._queue_depths()
            sample = {"t": started, "remaining": self._remaining(), "queue": depth.get("work"),
                      "retrying": depth.get("retry"), "outbox": self._outbox_pending()}
            self.samples.append(sample)
            self.latest = sample
            self._halt.wait(max(0.0, self.interval - (time.time() - started)))

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)
        if self._amqp is not None and self._amqp.is_open:
            try:
                self._amqp.close()
            except Exception:
                pass
        self._checkout.dispose()

    def _remaining(self) -> int | None:
        try:
            response = self._http.get(f"{self.rig.stack.url('inventory')}/drops/{self.drop_id}", timeout=2)
            return response.json().get("remaining") if response.status_code == 200 else None
        except (requests.RequestException, ValueError):
            return None

    def _queue_depths(self) -> dict:
        """Messages ready in notifications' work queue and waiting in its retry tiers (passive
        declares on the stack's vhost)."""
        try:
            if self._amqp is None or not self._amqp.is_open:
                self._amqp = amqp.connect(self.rig.amqp_url, "rehearsal-sampler", socket_timeout=2)
            channel = self._amqp.channel()
            try:
                depths = {"work": channel.queue_declare(work_queue("notifications"), passive=True).method.message_count,
                          "retry": 0}
                for delay in RETRY_DELAYS_MS:
                    depths["retry"] += channel.queue_declare(retry_queue("notifications", delay), passive=True).method.message_count
                return depths
            finally:
                if channel.is_open:
                    channel.close()
        except Exception:  # the broker restarting, or a queue not declared (yet, or other delays)
            self._amqp = None
            return {}

    def _outbox_pending(self) -> int | None:
        try:
            with self._checkout.connect() as conn:
                return conn.execute(sa.text("SELECT count(*) FROM outbox WHERE published_at IS NULL")).scalar()
        except sa.exc.SQLAlchemyError:
            return None
