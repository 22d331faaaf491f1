"""A background sampler: the drop's remaining stock, the notifications queue and the checkout outbox;
with a line, also the line's active passes and remaining units as checkout's database has them."""
from __future__ import annotations

import os
import threading
import time

import pika
import requests
import sqlalchemy as sa

from shared.config import Settings
from shared.messaging import connection as amqp
from shared.messaging.topology import retry_delays, retry_queue, waiting_queues


# the notifications consumer's tiers, as it declares them (with the rehearsal's environment)
RETRY_DELAYS_MS = retry_delays("notifications", Settings.from_env().retry_delays_ms)

# The line's figures, read twice over (waiting_room.py says how each is judged):
# - checkout's own view, one statement so one snapshot: the units the admitter last read from
#   inventory (written with its admissions, in the same transaction) and the passes in play
#   (admitted, unused, unexpired, as services/checkout/repository.py counts them);
# - the same passes against inventory's stock, read from inventory's database just before: the
#   units still available and the buyers who already hold one. A buyer whose order has held its
#   unit but whose pass checkout has not yet marked used (the two happen in two databases, a
#   moment apart; longer when a worker dies between them) is no longer waiting for stock.
INVENTORY_SAMPLE = sa.text(
    "SELECT (SELECT coalesce(sum(available), 0) FROM drop_stock_shards WHERE drop_id = CAST(:drop_id AS uuid)) "
    "AS available, "
    "(SELECT coalesce(array_agg(DISTINCT buyer_id), '{}') FROM reservations "
    " WHERE drop_id = CAST(:drop_id AS uuid) AND status IN ('held', 'sold')) AS holders"
)
LINE_SAMPLE = sa.text(
    "SELECT l.remaining_units, l.admission_factor, l.state, l.joined, l.admitted_through, "
    "l.opened_at IS NOT NULL AS opened, a.active_passes, a.holding_a_unit "
    "FROM lines l, LATERAL (SELECT count(*) AS active_passes, "
    "  count(*) FILTER (WHERE t.buyer_id = ANY(CAST(:holders AS varchar[]))) AS holding_a_unit "
    "  FROM line_tickets t WHERE t.drop_id = l.drop_id AND t.used_at IS NULL AND t.pass_expires_at > now()) a "
    "WHERE l.drop_id = CAST(:drop_id AS uuid)"
)


class Sampler(threading.Thread):
    def __init__(self, rig, drop_id: str, interval: float = 0.5, line: bool = False):
        super().__init__(name="sampler", daemon=True)
        self.rig, self.drop_id, self.interval, self.line = rig, drop_id, interval, line
        self.samples: list[dict] = []
        self.latest: dict = {}
        self._halt = threading.Event()
        self._http = requests.Session()
        self._amqp: pika.BlockingConnection | None = None
        self._checkout = sa.create_engine(rig.stack.infra.database_url("checkout"), pool_size=1, max_overflow=0)
        self._inventory = (sa.create_engine(rig.stack.infra.database_url("inventory"), pool_size=1, max_overflow=0)
                           if line else None)

    def run(self) -> None:
        while not self._halt.is_set():
            started = time.time()
            line = self._line() if self.line else {}
            depth = self._queue_depths()
            sample = {"t": started, "remaining": self._remaining(), "queue": depth.get("work"),
                      "retrying": depth.get("retry"), "outbox": self._outbox_pending(),
                      # the machine is shared (the stack, the crowd, and whatever else runs on it)
                      "load1": round(os.getloadavg()[0], 2), **line}
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
        if self._inventory is not None:
            self._inventory.dispose()

    def _remaining(self) -> int | None:
        try:
            # with the service key: the database's figure of this instant, not the pages' copy
            response = self._http.get(f"{self.rig.stack.url('inventory')}/drops/{self.drop_id}", timeout=2,
                                      headers=self.rig.stack.service_headers())
            return response.json().get("remaining") if response.status_code == 200 else None
        except (requests.RequestException, ValueError):
            return None

    def _queue_depths(self) -> dict:
        """Messages ready in notifications' work queue (and its returned lane) and waiting in its
        retry tiers (passive declares on the stack's vhost)."""
        try:
            if self._amqp is None or not self._amqp.is_open:
                self._amqp = amqp.connect(self.rig.amqp_url, "rehearsal-sampler", socket_timeout=2)
            channel = self._amqp.channel()
            try:
                depths = {"work": sum(channel.queue_declare(queue, passive=True).method.message_count
                                      for queue in waiting_queues("notifications")), "retry": 0}
                for delay in RETRY_DELAYS_MS:
                    depths["retry"] += channel.queue_declare(retry_queue("notifications", delay), passive=True).method.message_count
                return depths
            finally:
                if channel.is_open:
                    channel.close()
        except Exception:  # the broker restarting, or a queue not declared (yet, or other delays)
            self._amqp = None
            return {}

    def _line(self) -> dict:
        """The line's figures (see LINE_SAMPLE); {} before the line exists or while a database is away."""
        try:
            with self._inventory.connect() as conn:
                stock = conn.execute(INVENTORY_SAMPLE, {"drop_id": self.drop_id}).one()
            with self._checkout.connect() as conn:
                row = conn.execute(LINE_SAMPLE, {"drop_id": self.drop_id, "holders": list(stock.holders)}).first()
        except sa.exc.SQLAlchemyError:
            return {}
        if row is None:
            return {}
        return {"line_remaining": row.remaining_units, "factor": row.admission_factor, "line_state": row.state,
                "joined": row.joined, "admitted_through": row.admitted_through, "line_opened": row.opened,
                "active_passes": row.active_passes, "available": int(stock.available),
                "passes_holding_a_unit": row.holding_a_unit}

    def _outbox_pending(self) -> int | None:
        try:
            with self._checkout.connect() as conn:
                return conn.execute(sa.text("SELECT count(*) FROM outbox WHERE published_at IS NULL")).scalar()
        except sa.exc.SQLAlchemyError:
            return None
