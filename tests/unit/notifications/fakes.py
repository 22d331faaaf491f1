"""In-memory stand-ins for the delivery log, the unit of work and the mailer."""
import copy

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


class FakeDeliveryLog:
    def __init__(self):
        self.committed = []
        self.pending = []

    def for_event(self, event_id):
        return next((d for d in self.committed + self.pending if d.event_id == event_id), None)

    def add(self, delivery):
        self.pending.append(delivery)


class FakeUnitOfWork:
    """Like the real one: what is added is kept only if the block commits."""

    def __init__(self, deliveries: FakeDeliveryLog | None = None):
        self.deliveries = deliveries or FakeDeliveryLog()
        self.committed = False
        self.published = []

    def __enter__(self):
        self.committed = False
        return self

    def __exit__(self, *exc_info):
        self.deliveries.pending.clear()

    def commit(self):
        self.deliveries.committed.extend(self.deliveries.pending)
        self.deliveries.pending.clear()
        self.committed = True


class FakeMailer:
    def __init__(self, failure: Exception | None = None):
        self.sent = []
        self.failure = failure

    def send(self, email):
        if self.failure is not None:
            raise self.failure
        self.sent.append(email)
