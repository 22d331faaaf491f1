"""In-memory stand-ins for the delivery log, the unit of work and the mailer."""
import copy
from types import SimpleNamespace

import psycopg
import sqlalchemy as sa

from shared.messaging.envelope import Envelope

CANADIAN_ORDER = {
    "order_id": "7d9c1f9e-3b1a-4c52-9f0e-0c2b5f7a1e11",
    "buyer_id": "b-42",
    "buyer_email": "emilie@example.ca",
    "drop_id": "5f0d7c7e-8a43-4b0b-a1a4-0c8c1d2e3f40",
    "status": "confirmed",
    "items": [{"sku": "OPO-64-BLK", "name": "One phone, 64 GB", "quantity": 1, "unit_price": {"amount": 134999, "currency": "EUR"}}],
    "total": {"amount": 134999, "currency": "EUR"},
    "shipping_address": {
        "name": "Émilie Tremblay",
        "street_address": "24 Sussex Drive",
        "city": "Ottawa",
        "postal_code": "K1A 0B1",
        "country_area": "ON",
        "country_code": "CA",
    },
    "status_url": "http://127.0.0.1:8003/orders/7d9c1f9e-3b1a-4c52-9f0e-0c2b5f7a1e11",
    "confirmed_at": "2014-10-27T15:03:00+00:00",
}


def order(**changes) -> dict:
    document = copy.deepcopy(CANADIAN_ORDER)
    document.update(changes)
    return document


def confirmed(data: dict | None = None, event_id: str = "0b6c3e0e-6a3c-4d0e-9d7e-1c2f3a4b5c6d") -> Envelope:
    return Envelope(type="order.confirmed", data=data or order(), source="checkout", id=event_id)


def event(event_type: str, data: dict, event_id: str = "1c7d4f1f-7b4d-4e1f-8e8f-2d3e4f5a6b7c") -> Envelope:
    return Envelope(type=event_type, data=data, source="tests", id=event_id)


class FakeDeliveryLog:
    """Deliveries as SimpleNamespaces; like the real log, a sent delivery is never changed."""

    def __init__(self):
        self.committed = []
        self.pending = []

    def transaction(self) -> "FakeDeliveryLog":
        """The log as one transaction sees it: everything committed, and its own writes."""
        view = FakeDeliveryLog()
        view.committed = self.committed
        return view

    def for_event(self, event_id):
        return next((d for d in reversed(self.pending + self.committed) if d.event_id == event_id), None)

    def record_sent(self, attempt, now, unless_superseded=False):
        order_id, version = attempt.get("order_id"), attempt.get("order_version")
        newer = unless_superseded and order_id is not None and version is not None and any(
            d.order_id == order_id and d.status == "sent" and (d.order_version or 0) > version
            for d in self.pending + self.committed)
        if newer:
            return self._upsert(attempt, now, status="superseded")
        return self._upsert(attempt, now, status="sent", sent_at=now)

    def newer_state_mailed(self, order_id, version):
        from services.notifications.handlers import ORDER_STATE_EMAILS

        return order_id is not None and version is not None and any(
            d.order_id == order_id and d.status == "sent" and d.event_type in ORDER_STATE_EMAILS
            and (d.order_version or 0) > version for d in self.pending + self.committed)

    def record_not_sent(self, attempt, now):
        return self._upsert(attempt, now, status="superseded")

    def record_failure(self, attempt, now, outcome, error):
        self._upsert(attempt, now, status=outcome, last_error=error,
                     retries=int(outcome == "retrying"), dead_letters=int(outcome == "dead"))

    def _upsert(self, attempt, now, status, **changes):
        previous = self.for_event(attempt["event_id"])
        if previous is not None and previous.status == "sent":
            return None
        base = vars(previous) if previous is not None else {"attempts": 0, "retries": 0, "dead_letters": 0, "last_error": None}
        row = {**base, **{k: base.get(k) if v is None else v for k, v in attempt.items()}, "status": status, "updated_at": now}
        row["attempts"] = base["attempts"] + 1
        row["retries"] = base["retries"] + changes.pop("retries", 0)
        row["dead_letters"] = base["dead_letters"] + changes.pop("dead_letters", 0)
        row.update(changes)
        self.pending.append(SimpleNamespace(**row))
        return status


class FakeUnitOfWork:
    """Like the real one: what is added is kept only if the block commits."""

    def __init__(self, deliveries: FakeDeliveryLog | None = None, database_away: bool = False):
        self.log = deliveries or FakeDeliveryLog()
        self.deliveries = self.log
        self.committed = False
        self.published = []
        self.database_away = database_away

    @property
    def session(self):
        """Answers `SELECT 1` (`shared.db.away` asks), or fails as a database away does."""
        return self

    def execute(self, statement):
        if self.database_away:
            raise sa.exc.OperationalError("SELECT 1", {}, psycopg.OperationalError("connection refused"))

    def __enter__(self):
        # like a database transaction: another unit of work does not see these writes uncommitted
        self.deliveries = self.log.transaction()
        self.committed = False
        return self

    def __exit__(self, *exc_info):
        self.deliveries = self.log

    def rollback(self):
        self.deliveries.pending.clear()
        self.published.clear()

    def commit(self):
        self.log.committed.extend(self.deliveries.pending)
        self.deliveries.pending.clear()
        self.committed = True

    def publish(self, event_type, data):
        self.published.append((event_type, data))


class FakeMailer:
    def __init__(self, failure: Exception | None = None):
        self.sent = []
        self.failure = failure

    def send(self, email):
        if self.failure is not None:
            raise self.failure
        self.sent.append(email)
