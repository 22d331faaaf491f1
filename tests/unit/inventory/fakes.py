"""In-memory stand-ins for the inventory's unit of work and its repositories: no database, no
network. They keep what a user of the inventory would notice: each reservation's status and
order version, each drop's available units, each buyer's units held or bought, and the events
published."""
from __future__ import annotations

import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone

from services.inventory.errors import LimitExceeded, SaleNotOpen, SoldOut
from services.inventory.models import HELD, RELEASED, SOLD, Reservation

NOW = datetime(2014, 10, 27, 15, 5, tzinfo=timezone.utc)
DROP = uuid.UUID("5f0d7c7e-8a43-4b0b-a1a4-0c8c1d2e3f40")


def reservation(status: str = HELD, quantity: int = 1, order_version: int = 1, buyer_id: str = "ana",
                expires_at: datetime = NOW + timedelta(minutes=10), drop_id: uuid.UUID = DROP) -> Reservation:
    return Reservation(order_id=uuid.uuid4(), drop_id=drop_id, buyer_id=buyer_id, quantity=quantity, status=status,
                       hold_expires_at=expires_at, order_version=order_version)


class FakeReservations:
    """Reservations by order id; the clock of `expired_holds` is `now`."""

    def __init__(self, now: datetime = NOW):
        self.rows: dict[uuid.UUID, Reservation] = {}
        self.now = now
        self.expired_per_drop: Counter = Counter()  # what drops.holds_expired counts

    def add(self, held: Reservation) -> None:
        self.rows[held.order_id] = held

    def sold_at(self, order_id, order_version):
        sold = self.rows.get(order_id)
        return sold is not None and sold.status == SOLD and sold.order_version >= order_version

    def sell_held(self, order_id, order_version):
        held = self.rows.get(order_id)
        if held is None or held.status != HELD:
            return None
        held.status = SOLD
        held.order_version = max(held.order_version, order_version or held.order_version)
        return held

    def for_update(self, order_id):
        return self.rows.get(order_id)

    def expired_holds(self, batch_size, grace_seconds=0):
        cutoff = self.now - timedelta(seconds=grace_seconds)
        expired = [r for r in self.rows.values() if r.status == HELD and r.hold_expires_at <= cutoff]
        return sorted(expired, key=lambda r: r.hold_expires_at)[:batch_size]

    def count_expired(self, expired):
        self.expired_per_drop.update(r.drop_id for r in expired)


class FakeStock:
    """Available units per drop and units taken per (drop, buyer), checked as the real stock is:
    never below zero, never past a buyer's limit, nothing taken once the drop has closed."""

    def __init__(self, per_buyer_limit: int = 2, closed: tuple[uuid.UUID, ...] = ()):
        self.available: Counter = Counter()
        self.taken: Counter = Counter()
        self.per_buyer_limit = per_buyer_limit
        self.closed = set(closed)

    def give_back(self, reservations):
        for released in reservations:
            released.status = RELEASED
            self.available[released.drop_id] += released.quantity
            self.taken[(released.drop_id, released.buyer_id)] -= released.quantity

    def take_again(self, renewed):
        buyer = (renewed.drop_id, renewed.buyer_id)
        if renewed.drop_id in self.closed:
            raise SaleNotOpen("The drop has closed.")
        if self.available[renewed.drop_id] < renewed.quantity:
            raise SoldOut("No stock is left for this drop.", remaining=self.available[renewed.drop_id])
        if self.taken[buyer] + renewed.quantity > self.per_buyer_limit:
            raise LimitExceeded(f"A buyer may reserve at most {self.per_buyer_limit} of this drop.")
        self.available[renewed.drop_id] -= renewed.quantity
        self.taken[buyer] += renewed.quantity
        renewed.status = HELD


class FakeUnitOfWork:
    """The repositories in memory and the events published; a handler that reaches for the
    session fails the test."""

    def __init__(self, reservations: FakeReservations | None = None, stock: FakeStock | None = None):
        self.reservations = reservations or FakeReservations()
        self.stock = stock or FakeStock()
        self.published: list[tuple[str, dict]] = []
        self.committed = False

    def __enter__(self) -> "FakeUnitOfWork":
        self.committed = False
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def commit(self) -> None:
        self.committed = True

    def publish(self, event_type: str, data: dict) -> None:
        self.published.append((event_type, data))

    @property
    def session(self):
        raise AssertionError("the handler went around the repositories to the database")


def inventory(*reservations: Reservation, available: int = 5, **stock) -> FakeUnitOfWork:
    """A unit of work on one drop with `available` units left and `reservations`, whose units
    (unless released) count against their buyers' allowances."""
    uow = FakeUnitOfWork(stock=FakeStock(**stock))
    uow.stock.available[DROP] = available
    for existing in reservations:
        uow.reservations.add(existing)
        if existing.status != RELEASED:
            uow.stock.taken[(existing.drop_id, existing.buyer_id)] += existing.quantity
    return uow
