"""The inventory's operations, each run inside one unit of work, and its event handlers.

Every transaction that moves stock locks buyer allowance rows before drop rows (several of each
in sorted order), so none can deadlock another. Releases lock the reservation row first; a new
reservation is inserted last, and its row is one nobody else can be waiting for.
"""
from __future__ import annotations

import logging
import threading
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.dialects import postgresql as pg

from services.inventory.commands import AddProduct, ReserveStock, ScheduleDrop
from services.inventory.errors import (
    DropNotFound,
    InvalidDrop,
    LimitExceeded,
    ProductNotFound,
    ReservationNotFound,
    ReservationSold,
    SkuTaken,
    SoldOut,
)
from services.inventory.models import HELD, RELEASED, SOLD, BuyerAllowance, Drop, Product, Reservation
from shared.logs import bind_order_id
from shared.messaging.consumer import PermanentFailure

log = logging.getLogger("floodgate.inventory")


@dataclass(frozen=True)
class DropView:
    """A drop as a client sees it at one instant: its state follows from the clock and the stock."""

    id: uuid.UUID
    product: Product
    quantity: int
    remaining: int
    state: str
    opens_at: datetime
    closes_at: datetime
    per_buyer_limit: int

    @classmethod
    def of(cls, drop: Drop, now: datetime) -> "DropView":
        return cls(
            id=drop.id,
            product=drop.product,
            quantity=drop.quantity,
            remaining=drop.available,
            state=drop.state_at(now),
            opens_at=drop.opens_at,
            closes_at=drop.closes_at,
            per_buyer_limit=drop.per_buyer_limit,
        )


@dataclass(frozen=True)
class Held:
    stock: int  # units a released reservation gives back
    drop_id: uuid.UUID
    buyer_id: str


def _database_now(uow) -> datetime:
    # One clock for every process: the database's, fixed for the whole transaction.
    return uow.session.scalar(sa.select(sa.func.now()))


def _parse_id(raw: str, not_found: type[Exception]) -> uuid.UUID:
    try:
        return uuid.UUID(str(raw))
    except ValueError:
        raise not_found() from None


# --- products and drops (admin) ---------------------------------------------------------------

def add_product(cmd: AddProduct, uow) -> Product:
    product = Product(
        id=uuid.uuid4(),
        sku=cmd.sku,
        name=cmd.name,
        description=cmd.description,
        price_amount=cmd.price_amount,
        currency=cmd.currency,
    )
    uow.session.add(product)
    try:
        uow.session.flush()
    except sa.exc.IntegrityError:
        raise SkuTaken(f"A product with SKU {cmd.sku!r} already exists.") from None
    return product


def show_product(product_id: str, uow) -> Product:
    product = uow.session.get(Product, _parse_id(product_id, ProductNotFound))
    if product is None:
        raise ProductNotFound()
    return product


def schedule_drop(cmd: ScheduleDrop, uow) -> DropView:
    product = uow.session.get(Product, cmd.product_id)
    if product is None:
        raise InvalidDrop("product_id", "No product has this id.")
    now = _database_now(uow)
    drop = Drop.schedule(product, cmd.quantity, cmd.opens_at, cmd.closes_at, cmd.per_buyer_limit, now)
    uow.session.add(drop)
    uow.session.flush()
    return DropView.of(drop, now)


def show_drop(drop_id: str, uow) -> DropView:
    row = uow.session.execute(
        sa.select(Drop, sa.func.now()).where(Drop.id == _parse_id(drop_id, DropNotFound))
    ).first()
    if row is None:
        raise DropNotFound()
    drop, now = row
    return DropView.of(drop, now)


# --- reservations (checkout, on the order path) -----------------------------------------------

def find_reservation(order_id: uuid.UUID, uow, for_update: bool = False) -> Reservation | None:
    query = sa.select(Reservation).where(Reservation.order_id == order_id)
    if for_update:
        query = query.with_for_update(of=Reservation)
    return uow.session.scalars(query).first()


def reserve(cmd: ReserveStock, uow, hold_ttl_seconds: int) -> tuple[Reservation, bool]:
    """Hold stock for an order; idempotent by order id. Returns the reservation and whether it is new."""
    bind_order_id(cmd.order_id)
    existing = find_reservation(cmd.order_id, uow)
    if existing is not None:
        return existing, False
    try:
        return _hold(cmd, uow, hold_ttl_seconds), True
    except (LimitExceeded, SoldOut, _LostRace):
        # A concurrent request with the same order id may have committed first: our allowance
        # and stock updates then waited on its row locks and saw its effects. Its reservation,
        # not our refusal, is the answer.
        uow.rollback()
        winner = find_reservation(cmd.order_id, uow)
        if winner is None:
            raise
        return winner, False


class _LostRace(Exception):
    """Another transaction inserted a reservation with this order id first."""


def _hold(cmd: ReserveStock, uow, hold_ttl_seconds: int) -> Reservation:
    session = uow.session
    row = session.execute(sa.select(Drop, sa.func.now()).where(Drop.id == cmd.drop_id)).first()
    if row is None:
        raise DropNotFound()
    drop, now = row
    drop.check_reservable(cmd.quantity, now)
    if drop.available < cmd.quantity:
        raise _sold_out(drop)  # no stock in sight: refuse without taking a single row lock

    allowance = BuyerAllowance.__table__
    taken = session.execute(
        pg.insert(allowance)
        .values(drop_id=drop.id, buyer_id=cmd.buyer_id, taken=cmd.quantity)
        .on_conflict_do_update(
            index_elements=[allowance.c.drop_id, allowance.c.buyer_id],
            set_={"taken": allowance.c.taken + cmd.quantity},
            where=allowance.c.taken + cmd.quantity <= drop.per_buyer_limit,
        )
        .returning(allowance.c.taken)
    ).first()
    if taken is None:
        raise LimitExceeded(f"A buyer may reserve at most {drop.per_buyer_limit} of this drop.")

    drops = Drop.__table__
    remaining = session.execute(
        sa.update(drops)
        .where(drops.c.id == drop.id, drops.c.available >= cmd.quantity)
        .values(available=drops.c.available - cmd.quantity)
        .returning(drops.c.available)
    ).scalar()
    if remaining is None:
        raise _sold_out(drop)

    reservation = Reservation(
        order_id=cmd.order_id,
        drop=drop,
        buyer_id=cmd.buyer_id,
        quantity=cmd.quantity,
        status=HELD,
        hold_expires_at=now + timedelta(seconds=hold_ttl_seconds),
    )
    session.add(reservation)
    try:
        session.flush()
    except sa.exc.IntegrityError:
        raise _LostRace() from None
    if remaining == 0:
        uow.publish("drop.sold_out", {"drop_id": str(drop.id), "product_id": str(drop.product_id)})
    return reservation


def _sold_out(drop: Drop) -> SoldOut:
    return SoldOut("No stock is left for this drop.", remaining=max(drop.available, 0))


def release(order_id: str, uow) -> Reservation:
    """Give a held reservation's stock back (checkout abandoning an order). Idempotent."""
    parsed = _parse_id(order_id, ReservationNotFound)
    bind_order_id(parsed)
    reservation = find_reservation(parsed, uow, for_update=True)
    if reservation is None:
        raise ReservationNotFound()
    if reservation.status == SOLD:
        raise ReservationSold("This reservation was paid for; cancel the order to release it.")
    if reservation.status == HELD:
        _release([reservation], uow)
    return reservation


def _release(reservations: list[Reservation], uow) -> None:
    for reservation in reservations:
        reservation.status = RELEASED
    uow.session.flush()
    _give_back(uow, [Held(r.quantity, r.drop_id, r.buyer_id) for r in reservations])


def _give_back(uow, holds: Iterable[Held]) -> None:
    """Return units to their drops and to their buyers' allowances, in the global lock order."""
    by_buyer: Counter = Counter()
    by_drop: Counter = Counter()
    for hold in holds:
        by_buyer[(hold.drop_id, hold.buyer_id)] += hold.stock
        by_drop[hold.drop_id] += hold.stock
    allowance = BuyerAllowance.__table__
    drops = Drop.__table__
    uow.session.execute(
        allowance.update()
        .where(allowance.c.drop_id == sa.bindparam("d"), allowance.c.buyer_id == sa.bindparam("b"))
        .values(taken=allowance.c.taken - sa.bindparam("q")),
        [{"d": d, "b": b, "q": q} for (d, b), q in sorted(by_buyer.items())],
    )
    uow.session.execute(
        drops.update().where(drops.c.id == sa.bindparam("d")).values(available=drops.c.available + sa.bindparam("q")),
        [{"d": d, "q": q} for d, q in sorted(by_drop.items())],
    )


def release_expired_holds(uow, batch_size: int) -> int:
    """Release up to `batch_size` holds whose time ran out; replicas share the work (SKIP LOCKED)."""
    expired = uow.session.scalars(
        sa.select(Reservation)
        .options(orm.lazyload(Reservation.drop))
        .where(Reservation.status == HELD, Reservation.hold_expires_at <= sa.func.now())
        .order_by(Reservation.hold_expires_at)
        .limit(batch_size)
        .with_for_update(of=Reservation, skip_locked=True)
    ).all()
    if not expired:
        return 0
    _release(list(expired), uow)
    for reservation in expired:
        uow.publish(
            "reservation.expired",
            {"order_id": str(reservation.order_id), "drop_id": str(reservation.drop_id), "quantity": reservation.quantity},
        )
    log.info("expired holds released", extra={"count": len(expired)})
    return len(expired)


def sweep_until_stopped(stop: threading.Event, uow_factory, batch_size: int, interval_seconds: float) -> None:
    """Release expired holds until `stop` is set; a full batch means more are waiting, so no pause."""
    while not stop.is_set():
        try:
            with uow_factory() as uow:
                released = release_expired_holds(uow, batch_size)
                uow.commit()
        except sa.exc.SQLAlchemyError:
            log.warning("sweep failed, trying again later", exc_info=True)
            released = 0
        if released < batch_size:
            stop.wait(interval_seconds)


# --- events -----------------------------------------------------------------------------------

def _order_id_of(envelope) -> uuid.UUID:
    try:
        order_id = uuid.UUID(str(envelope.data["order_id"]))
    except (KeyError, ValueError):
        raise PermanentFailure(f"{envelope.type} without a valid order_id") from None
    bind_order_id(order_id)
    return order_id


def on_order_confirmed(envelope, uow) -> None:
    order_id = _order_id_of(envelope)
    reservation = find_reservation(order_id, uow, for_update=True)
    if reservation is None:
        raise PermanentFailure("a confirmed order has no reservation")
    if reservation.status == HELD:
        reservation.status = SOLD
    elif reservation.status == RELEASED:
        # Paid after the hold was given back; checkout re-reserves or refunds (not handled here).
        log.warning("confirmed order's reservation was already released", extra={"drop_id": str(reservation.drop_id)})


def on_order_ended(envelope, uow) -> None:
    """A cancelled or expired order gives its stock back, whether it was held or already sold."""
    order_id = _order_id_of(envelope)
    reservation = find_reservation(order_id, uow, for_update=True)
    if reservation is None:
        log.warning("no reservation to release", extra={"event_type": envelope.type})
        return
    if reservation.status != RELEASED:
        _release([reservation], uow)


EVENT_HANDLERS = {
    "order.confirmed": on_order_confirmed,
    "order.cancelled": on_order_ended,
    "order.expired": on_order_ended,
}
