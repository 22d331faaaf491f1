"""Reservations and the units they move, behind the unit of work the event handlers, the sweeper
and the HTTP sale and release receive (tests/unit/inventory/fakes.py stands in for them).

The hold on the order path (`handlers.reservations.reserve`) runs its statements on the session
itself, with the lock order written beside them; a renewal here runs that same code.
"""
from __future__ import annotations

import uuid
from collections import Counter
from typing import Callable

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.dialects import postgresql as pg

from services.inventory.handlers.reservations import PRODUCT_FIELDS, find_reservation, hold_again, product_of
from services.inventory.models import HELD, RELEASED, SOLD, BuyerAllowance, Drop, Reservation
from shared.admin_actions import AdminActions
from shared.db import UnitOfWork
from shared.sql import Statement


class Reservations:
    """A reservation found here belongs to the session: a change to its status or order version
    is written with the transaction."""

    def __init__(self, session: orm.Session):
        self._session = session

    def sell_held(self, order_id: uuid.UUID, order_version: int | None) -> Reservation | None:
        """Sell the order's hold if it is still held (a drop's every paid order), in one statement
        that locks the row (first in the lock order) and reads what the answer shows; None for
        any other state, which `for_update` and the handler deal with. The reservation and its
        drop are not added to the session."""
        row = _SELL_HELD.first(self._session, {"order_id": order_id, "order_version": order_version})
        if row is None:
            return None
        reservation = Reservation(**dict(zip(_RESERVATION_FIELDS, row)))
        product_id, *product = row[len(_RESERVATION_FIELDS):]
        reservation.drop = Drop(id=reservation.drop_id, product_id=product_id, product=product_of(product_id, product))
        return reservation

    def sold_at(self, order_id: uuid.UUID, order_version: int) -> bool:
        """Whether the order's units are sold, for this version of the order or a newer one."""
        return _SOLD_AT.first(self._session, {"order_id": order_id, "order_version": order_version}) is not None

    def for_update(self, order_id: uuid.UUID) -> Reservation | None:
        """The order's reservation, its row locked until the transaction ends (first in the lock
        order)."""
        return find_reservation(self._session, order_id, for_update=True)

    def expired_holds(self, batch_size: int, grace_seconds: float = 0) -> list[Reservation]:
        """Up to `batch_size` holds whose time ran out `grace_seconds` ago, oldest first, locked;
        a row another transaction holds is skipped, so sweeper replicas share the work."""
        return list(self._session.scalars(
            sa.select(Reservation)
            .options(orm.lazyload(Reservation.drop))
            .where(
                Reservation.status == HELD,
                Reservation.hold_expires_at <= sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, grace_seconds),
            )
            .order_by(Reservation.hold_expires_at)
            .limit(batch_size)
            .with_for_update(of=Reservation, skip_locked=True)
        ))

    def count_expired(self, expired: list[Reservation]) -> None:
        """Add `expired` (holds released because their time ran out) to their drops' counts of
        expiries. The drop rows come last in the lock order (handlers/reservations.py)."""
        per_drop = Counter(reservation.drop_id for reservation in expired)
        self._session.execute(_COUNT_EXPIRED, [{"drop_id": d, "n": n} for d, n in sorted(per_drop.items())])


_RESERVATION_FIELDS = ("order_id", "drop_id", "buyer_id", "quantity", "status", "hold_expires_at", "order_version")
_SELL_HELD = Statement(
    f"UPDATE reservations r SET status = '{SOLD}', updated_at = now(), "
    "order_version = greatest(r.order_version, coalesce(CAST(:order_version AS integer), r.order_version)) "
    "FROM drops d JOIN products p ON p.id = d.product_id "
    f"WHERE r.order_id = :order_id AND r.status = '{HELD}' AND d.id = r.drop_id "
    f"RETURNING {', '.join('r.' + field for field in _RESERVATION_FIELDS)}, d.product_id, "
    f"{', '.join('p.' + field for field in PRODUCT_FIELDS)}"
)
_SOLD_AT = Statement(
    f"SELECT 1 FROM reservations WHERE order_id = :order_id AND status = '{SOLD}' AND order_version >= :order_version"
)
_COUNT_EXPIRED = sa.text("UPDATE drops SET holds_expired = holds_expired + :n WHERE id = :drop_id")


# Released units go to one shard row of the drop, picked at random (without waiting for a lock
# to pick it: the update then waits for that row like any other).
_GIVE_BACK = sa.text(
    """
    UPDATE drop_stock_shards SET available = available + :q
    WHERE drop_id = :d AND shard = (
        SELECT shard FROM drop_stock_shards WHERE drop_id = :d ORDER BY random() LIMIT 1)
    """
)


# The reservations of a drop are found by their index on drop_id; a released one holds nothing.
_STOCK_FIGURES = sa.text(
    f"""
    SELECT drops.quantity + drops.restocked AS total,
           (SELECT coalesce(sum(available), 0) FROM drop_stock_shards WHERE drop_id = drops.id) AS remaining,
           (SELECT coalesce(sum(quantity), 0) FROM reservations
             WHERE drop_id = drops.id AND status = '{HELD}') AS held,
           (SELECT coalesce(sum(quantity), 0) FROM reservations
             WHERE drop_id = drops.id AND status = '{SOLD}') AS sold
    FROM drops WHERE drops.id = :drop_id
    """
).bindparams(sa.bindparam("drop_id", type_=pg.UUID(as_uuid=True)))


class Stock:
    """A drop's units moving between its stock rows and the reservations that hold them."""

    def __init__(self, session: orm.Session, publish: Callable[[str, dict], None]):
        self._session = session
        self._publish = publish  # a renewal that takes the last unit announces `drop.sold_out`

    def give_back(self, reservations: list[Reservation]) -> None:
        """Release `reservations` (locked, held or sold): each becomes `released`, and its units
        go back to its drop's stock and its buyer's allowance, in the global lock order (the
        reservation rows, locked by the caller, then the buyer allowances sorted, then the stock
        rows in drop order; the whole order is written at the top of handlers/reservations.py).
        The reservations' new status is written after the allowances: a hold of the same order id
        (a duplicate of the order, still in flight) takes its buyer's allowance, then waits on
        that new row version, and would otherwise deadlock with this release."""
        by_buyer: Counter = Counter()
        by_drop: Counter = Counter()
        for reservation in reservations:
            by_buyer[(reservation.drop_id, reservation.buyer_id)] += reservation.quantity
            by_drop[reservation.drop_id] += reservation.quantity
        allowance = BuyerAllowance.__table__
        self._session.execute(
            allowance.update()
            .where(allowance.c.drop_id == sa.bindparam("d"), allowance.c.buyer_id == sa.bindparam("b"))
            .values(taken=allowance.c.taken - sa.bindparam("q")),
            [{"d": d, "b": b, "q": q} for (d, b), q in sorted(by_buyer.items())],
        )
        for reservation in reservations:
            reservation.status = RELEASED
        self._session.flush()
        for drop_id, units in sorted(by_drop.items()):
            self._session.execute(_GIVE_BACK, {"d": drop_id, "q": units})

    def take_again(self, reservation: Reservation) -> None:
        """Hold a released reservation's units again, as a renewal does: it is `held` again, its
        units out of the drop's stock and into its buyer's allowance. Refused (SoldOut,
        SaleNotOpen, LimitExceeded), the transaction is left as it was.

        Nothing of the reservation may be waiting to be written when this is called (note a new
        order version after it): the savepoint writes what is waiting before the allowance is
        taken, and a duplicate hold of the order, which takes the allowance and then inserts the
        order id's row, would wait on that new row version while this waits on its allowance."""
        with self._session.begin_nested():
            hold_again(reservation, self._session, self._publish)

    def figures(self, drop_id: uuid.UUID) -> dict | None:
        """A drop's units as the control room shows them: `total` (quantity and restocks),
        `remaining` (its stock rows), `held` and `sold` (its reservations); None for no drop.
        One statement, so the four add up: total = remaining + held + sold."""
        row = self._session.execute(_STOCK_FIGURES, {"drop_id": drop_id}).first()
        return None if row is None else dict(row._mapping)


class InventoryUnitOfWork(UnitOfWork):
    """The shared unit of work plus the inventory's repositories on its session."""

    reservations: Reservations
    stock: Stock
    admin_actions: AdminActions

    def __enter__(self) -> "InventoryUnitOfWork":
        super().__enter__()
        self.reservations = Reservations(self.session)
        self.stock = Stock(self.session, self.publish)
        self.admin_actions = AdminActions(self.session)
        return self
