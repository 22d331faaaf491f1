"""The inventory's operations, each run inside one unit of work, and its event handlers.

Lock order, so no two transactions can deadlock: reservation row (releases, renewals) → buyer
allowance rows (sorted) → stock shard rows (in shard order whenever a transaction may wait for a
second one; see `take_stock`) → the drop row and its announcements. A new reservation is inserted
before its stock is taken, keeping a stock row locked only for the decrement and the commit; its
row is one nobody else can be waiting for.
"""
from __future__ import annotations

import logging
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Callable, Iterable

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.dialects import postgresql as pg

from services.inventory.commands import AddProduct, ChangeDrop, ReserveStock, ScheduleDrop
from services.inventory.errors import (
    CountryNotAllowed,
    DropNotFound,
    InvalidDrop,
    InviteOnly,
    LimitExceeded,
    ProductNotFound,
    ReservationNotFound,
    ReservationSold,
    SaleNotOpen,
    SkuTaken,
    SoldOut,
)
from services.inventory.models import (
    DROP_OPENED,
    DROP_SOLD_OUT,
    HELD,
    RELEASED,
    SOLD,
    BuyerAllowance,
    Drop,
    DropAnnouncement,
    Product,
    Reservation,
    StockShard,
    spread,
)
from shared.logs import bind_order_id
from shared.messaging.consumer import PermanentFailure

log = logging.getLogger("floodgate.inventory")


@dataclass(frozen=True)
class DropView:
    """A drop as a client sees it at one instant: its state follows from the clock and the stock."""

    id: uuid.UUID
    product: Product
    quantity: int
    restocked: int
    remaining: int
    state: str
    opens_at: datetime
    closes_at: datetime
    per_buyer_limit: int
    invite_only_until: datetime | None
    invite_tier: str | None
    shipping_countries: list[str]
    stock_shards: int
    hold_ttl_seconds: int | None

    @classmethod
    def of(cls, drop: Drop, now: datetime, remaining: int) -> "DropView":
        return cls(
            id=drop.id,
            product=drop.product,
            quantity=drop.quantity,
            restocked=drop.restocked,
            remaining=remaining,
            state=drop.state_at(now, remaining),
            opens_at=drop.opens_at,
            closes_at=drop.closes_at,
            per_buyer_limit=drop.per_buyer_limit,
            invite_only_until=drop.invite_only_until,
            invite_tier=drop.invite_tier,
            shipping_countries=list(drop.shipping_countries),
            stock_shards=drop.stock_shards,
            hold_ttl_seconds=drop.hold_ttl_seconds,
        )


@dataclass(frozen=True)
class Held:
    stock: int  # units a released reservation gives back
    drop_id: uuid.UUID
    buyer_id: str


# A drop has at most this much stock over its life (quantity plus restocks): 422 beyond.
MAX_TOTAL_STOCK = 10_000_000

SHARDS = StockShard.__table__
RESERVATIONS = Reservation.__table__


def _remaining(drop_id):
    """A scalar subquery: the drop's available units, summed over its shard rows."""
    return (
        sa.select(sa.func.coalesce(sa.func.sum(SHARDS.c.available), 0))
        .where(SHARDS.c.drop_id == drop_id)
        .scalar_subquery()
    )


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


def schedule_drop(cmd: ScheduleDrop, uow, default_stock_shards: int = 16) -> DropView:
    product = uow.session.get(Product, cmd.product_id)
    if product is None:
        raise InvalidDrop("product_id", "No product has this id.")
    now = _database_now(uow)
    drop = Drop.schedule(
        product,
        cmd.quantity,
        cmd.opens_at,
        cmd.closes_at,
        cmd.per_buyer_limit,
        now,
        stock_shards=cmd.stock_shards or default_stock_shards,
        invite_only_until=cmd.invite_only_until,
        invite_tier=cmd.invite_tier,
        shipping_countries=cmd.shipping_countries,
        hold_ttl_seconds=cmd.hold_ttl_seconds,
    )
    uow.session.add(drop)
    uow.session.flush()
    uow.session.add_all(drop.initial_stock())
    uow.session.flush()
    return DropView.of(drop, now, drop.quantity)


def show_drop(drop_id: str, uow) -> DropView:
    row = uow.session.execute(
        sa.select(Drop, sa.func.now(), _remaining(Drop.id))
        .where(Drop.id == _parse_id(drop_id, DropNotFound))
        .execution_options(populate_existing=True)
    ).first()
    if row is None:
        raise DropNotFound()
    drop, now, remaining = row
    return DropView.of(drop, now, remaining)


def change_drop(drop_id: str, cmd: ChangeDrop, uow) -> DropView:
    """Move a drop's close (extend or shorten, even reopen a closed drop) and/or add stock.

    Shard rows are locked before the drop row, as a reservation that sells the last unit does.
    """
    view = show_drop(drop_id, uow)
    drops = Drop.__table__
    if cmd.closes_at is not None:
        uow.session.get(Drop, view.id).check_new_close(cmd.closes_at, _database_now(uow))
    if cmd.add_quantity:
        if view.quantity + view.restocked + cmd.add_quantity > MAX_TOTAL_STOCK:
            raise InvalidDrop("add_quantity", f"A drop holds at most {MAX_TOTAL_STOCK} units over its life.")
        _restock(uow, view.id, view.stock_shards, cmd.add_quantity)
        uow.session.execute(
            drops.update().where(drops.c.id == view.id).values(restocked=drops.c.restocked + cmd.add_quantity)
        )
        # Stock came back: the next time it runs out is news again.
        announcements = DropAnnouncement.__table__
        uow.session.execute(
            announcements.delete().where(
                announcements.c.drop_id == view.id, announcements.c.event_type == DROP_SOLD_OUT
            )
        )
    if cmd.closes_at is not None:
        uow.session.execute(drops.update().where(drops.c.id == view.id).values(closes_at=cmd.closes_at))
    log.info(
        "drop changed",
        extra={"drop_id": str(view.id), "closes_at": cmd.closes_at and cmd.closes_at.isoformat(),
               "add_quantity": cmd.add_quantity},
    )
    return show_drop(str(view.id), uow)


def _restock(uow, drop_id: uuid.UUID, shard_count: int, units: int) -> None:
    # Every shard row is updated in shard order, the order a multi-shard hold locks them in.
    uow.session.execute(
        SHARDS.update()
        .where(SHARDS.c.drop_id == drop_id, SHARDS.c.shard == sa.bindparam("s"))
        .values(available=SHARDS.c.available + sa.bindparam("q")),
        [{"s": shard, "q": q} for shard, q in enumerate(spread(units, shard_count)) if q],
    )


# --- reservations (checkout, on the order path) -----------------------------------------------

def find_reservation(order_id: uuid.UUID, uow, for_update: bool = False) -> Reservation | None:
    query = sa.select(Reservation).where(Reservation.order_id == order_id)
    if for_update:
        query = query.with_for_update(of=Reservation)
    return uow.session.scalars(query).first()


def reserve(cmd: ReserveStock, uow, hold_ttl_seconds: int) -> tuple[Reservation, bool]:
    """Hold stock for an order; idempotent by order id. Returns the reservation and whether it is new.

    `hold_ttl_seconds` is the service default; a drop may set its own.
    """
    bind_order_id(cmd.order_id)
    if cmd.renew:
        existing = find_reservation(cmd.order_id, uow, for_update=True)
        if existing is not None:
            _note_order_version(existing, cmd.order_version)
            if existing.status == RELEASED:
                # A payment that arrived after its hold was given back: hold the same units again.
                renewal = replace(cmd, drop_id=existing.drop_id, buyer_id=existing.buyer_id, quantity=existing.quantity)
                return _hold(renewal, uow, hold_ttl_seconds, renewing=existing), True
            return existing, False
    # Nearly every request on drop day is a new order id: no look-up first. A repeat finds its
    # reservation when the insert (or a refusal before it) sends it to the existing one below.
    try:
        return _hold(cmd, uow, hold_ttl_seconds), True
    except (LimitExceeded, SoldOut, SaleNotOpen, InviteOnly, CountryNotAllowed, _LostRace):
        # The order id may already have its reservation: made by this order's earlier attempt
        # (before the drop closed, say), or by a concurrent request that committed first, whose
        # allowance and stock updates ours waited on. That reservation, not our refusal, is the
        # answer.
        uow.rollback()
        winner = find_reservation(cmd.order_id, uow)
        if winner is None:
            raise
        return winner, False


# Built once: composing a statement costs more Python time than running it on the order path.
_DROP_NOW_AND_REMAINING = sa.select(Drop, sa.func.now(), _remaining(Drop.id)).where(Drop.id == sa.bindparam("drop_id"))


# SQLAlchemy cannot cache a compiled ON CONFLICT statement; written once, it costs nothing to build.
_TAKE_BUYER_ALLOWANCE = sa.text(
    "INSERT INTO buyer_allowances (drop_id, buyer_id, taken) VALUES (:drop_id, :buyer_id, :quantity) "
    "ON CONFLICT (drop_id, buyer_id) DO UPDATE SET taken = buyer_allowances.taken + :quantity "
    "WHERE buyer_allowances.taken + :quantity <= :limit RETURNING taken"
)
_INSERT_RESERVATION = RESERVATIONS.insert()


class _LostRace(Exception):
    """Another transaction inserted a reservation with this order id first."""


def _hold(cmd: ReserveStock, uow, hold_ttl_seconds: int, renewing: Reservation | None = None) -> Reservation:
    session = uow.session
    row = session.execute(_DROP_NOW_AND_REMAINING, {"drop_id": cmd.drop_id}).first()
    if row is None:
        raise DropNotFound()
    drop, now, remaining = row
    drop.check_reservable(cmd.quantity, now, cmd.buyer_tier, cmd.shipping_country, renewal=renewing is not None)
    if remaining < cmd.quantity:
        raise _sold_out(remaining)  # no stock in sight: refuse without taking a single row lock

    taken = session.execute(
        _TAKE_BUYER_ALLOWANCE,
        {"drop_id": drop.id, "buyer_id": cmd.buyer_id, "quantity": cmd.quantity, "limit": drop.per_buyer_limit},
    ).first()
    if taken is None:
        raise LimitExceeded(f"A buyer may reserve at most {drop.per_buyer_limit} of this drop.")

    # The reservation is written before the stock is taken, so the transaction holds a stock
    # row's lock for as little time as possible: the decrement, then the commit.
    expires_at = now + timedelta(seconds=drop.hold_ttl_seconds or hold_ttl_seconds)
    if renewing is not None:
        reservation = renewing
        reservation.status, reservation.hold_expires_at = HELD, expires_at
        session.flush()
    else:
        values = dict(order_id=cmd.order_id, drop_id=drop.id, buyer_id=cmd.buyer_id, quantity=cmd.quantity,
                      status=HELD, hold_expires_at=expires_at, order_version=cmd.order_version or 1)
        try:
            # Core rather than Session.add + flush: the order path's hottest statement.
            session.execute(_INSERT_RESERVATION, values)
        except sa.exc.IntegrityError:
            raise _LostRace() from None
        # What the response shows; not added to the session, which has nothing left to flush.
        reservation = Reservation(**values)
        reservation.drop = drop

    shard_left = take_stock(session, drop.id, cmd.quantity)
    if shard_left is None:
        raise _sold_out(0)  # the caller rolls back, reservation row included
    if shard_left == 0 and session.scalar(sa.select(_remaining(drop.id))) == 0:
        _announce(uow, [drop.id], DROP_SOLD_OUT, {drop.id: drop.product_id})
    return reservation


# Takes `q` units from one shard row with enough stock. FOR UPDATE re-checks `available` on the
# row version it locks, so the decrement never goes below zero; a row whose re-check fails stays
# locked until the transaction ends (PostgreSQL keeps the lock), which is why the statements run
# inside a savepoint that is rolled back when they take nothing.
_TAKE_FROM_ONE_SHARD = """
UPDATE drop_stock_shards SET available = available - :q
WHERE drop_id = :d AND available >= :q AND shard = (
    SELECT shard FROM drop_stock_shards
    WHERE drop_id = :d AND available >= :q
    ORDER BY {order} LIMIT 1
    FOR UPDATE {skip})
RETURNING available
"""
# A random shard among those nobody has locked: no waiting at all.
TAKE_FROM_UNLOCKED_SHARD = sa.text(_TAKE_FROM_ONE_SHARD.format(order="random()", skip="SKIP LOCKED"))
# The first shard with stock, waiting for its lock; in shard order, like every statement that may
# wait for a second shard row while holding one, so they cannot deadlock.
TAKE_FROM_ANY_SHARD = sa.text(_TAKE_FROM_ONE_SHARD.format(order="shard", skip=""))


def take_stock(session, drop_id: uuid.UUID, quantity: int) -> int | None:
    """Take `quantity` units of a drop's stock; return what is left in the (last) shard touched,
    or None when the drop has not got that many units.

    Three steps, each only when the one before took nothing: a random unlocked shard with enough
    stock; any shard with enough stock, waiting for its lock (a shard locked by a transaction
    that will roll back still has stock: no false sold-out); units gathered from several shards
    locked in shard order (a hold of several units when no single row has them).
    """
    params = {"d": drop_id, "q": quantity}
    for statement in (TAKE_FROM_UNLOCKED_SHARD, TAKE_FROM_ANY_SHARD):
        session.execute(_SAVEPOINT)
        left = session.execute(statement, params).scalar()
        if left is not None:
            return left
        session.execute(_ROLLBACK_TO_SAVEPOINT)  # drop the locks on rows that had emptied meanwhile
    rows = session.execute(
        sa.select(SHARDS.c.shard, SHARDS.c.available)
        .where(SHARDS.c.drop_id == drop_id, SHARDS.c.available > 0)
        .order_by(SHARDS.c.shard)
        .with_for_update()
    ).all()
    if sum(available for _, available in rows) < quantity:
        return None
    wanted, taken = quantity, []
    for shard, available in rows:
        take = min(available, wanted)
        taken.append({"s": shard, "q": take})
        wanted -= take
        if not wanted:
            break
    session.execute(
        SHARDS.update()
        .where(SHARDS.c.drop_id == drop_id, SHARDS.c.shard == sa.bindparam("s"))
        .values(available=SHARDS.c.available - sa.bindparam("q")),
        taken,
    )
    return available - taken[-1]["q"]


# Plain SQL rather than Session.begin_nested(): the savepoint only ever wraps these Core
# statements, and a successful take needs no RELEASE round trip (the commit releases it).
_SAVEPOINT = sa.text("SAVEPOINT take_stock")
_ROLLBACK_TO_SAVEPOINT = sa.text("ROLLBACK TO SAVEPOINT take_stock")


def _sold_out(remaining: int) -> SoldOut:
    return SoldOut("No stock is left for this drop.", remaining=max(remaining, 0))


def _announce(uow, drop_ids: Iterable[uuid.UUID], event_type: str, product_ids: dict) -> list[uuid.UUID]:
    """Publish `event_type` for each drop that has not had it yet; return those announced now."""
    announcements = DropAnnouncement.__table__
    fresh = uow.session.scalars(
        pg.insert(announcements)
        .values([{"drop_id": drop_id, "event_type": event_type} for drop_id in drop_ids])
        .on_conflict_do_nothing()
        .returning(announcements.c.drop_id)
    ).all()
    for drop_id in fresh:
        uow.publish(event_type, {"drop_id": str(drop_id), "product_id": str(product_ids[drop_id])})
    return list(fresh)


def announce_drops(uow) -> int:
    """Publish `drop.opened` for open drops not yet announced, and `drop.sold_out` for open drops
    without stock whose last units went in two racing transactions (each saw the other's unit)."""
    now = sa.func.now()
    open_now = sa.select(Drop.id, Drop.product_id).where(Drop.opens_at <= now, Drop.closes_at > now)
    announcements = DropAnnouncement.__table__

    def not_announced(event_type: str):
        return ~sa.exists().where(announcements.c.drop_id == Drop.id, announcements.c.event_type == event_type)

    count = 0
    for event_type, query in (
        (DROP_OPENED, open_now.where(not_announced(DROP_OPENED))),
        (DROP_SOLD_OUT, open_now.where(not_announced(DROP_SOLD_OUT), _remaining(Drop.id) == 0)),
    ):
        found = dict(uow.session.execute(query).all())
        if found:
            count += len(_announce(uow, sorted(found), event_type, found))
    return count


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


def sell(order_id: str, uow, order_version: int | None = None) -> Reservation:
    """Turn an order's hold into a sale now: checkout calls this as it confirms a payment, so a
    paid order's units never wait on the event (`order.confirmed` repeats it, harmlessly). A hold
    already given back is taken again if the units are still there; else SoldOut (or another
    refusal) and checkout refunds. `order_version` is the confirmed order's."""
    parsed = _parse_id(order_id, ReservationNotFound)
    bind_order_id(parsed)
    reservation = find_reservation(parsed, uow, for_update=True)
    if reservation is None:
        raise ReservationNotFound()
    _note_order_version(reservation, order_version)
    if reservation.status == RELEASED:
        _take_again(reservation, uow)
    reservation.status = SOLD
    return reservation


def _take_again(reservation: Reservation, uow) -> None:
    renewal = ReserveStock(order_id=reservation.order_id, drop_id=reservation.drop_id,
                           buyer_id=reservation.buyer_id, quantity=reservation.quantity, renew=True)
    _hold(renewal, uow, hold_ttl_seconds=0, renewing=reservation)


def _release(reservations: list[Reservation], uow) -> None:
    for reservation in reservations:
        reservation.status = RELEASED
    uow.session.flush()
    _give_back(uow, [Held(r.quantity, r.drop_id, r.buyer_id) for r in reservations])


# Released units go to one shard row of the drop, picked at random (without waiting for a lock
# to pick it: the update then waits for that row like any other).
_GIVE_BACK = sa.text(
    """
    UPDATE drop_stock_shards SET available = available + :q
    WHERE drop_id = :d AND shard = (
        SELECT shard FROM drop_stock_shards WHERE drop_id = :d ORDER BY random() LIMIT 1)
    """
)


def _give_back(uow, holds: Iterable[Held]) -> None:
    """Return units to their drops and to their buyers' allowances, in the global lock order."""
    by_buyer: Counter = Counter()
    by_drop: Counter = Counter()
    for hold in holds:
        by_buyer[(hold.drop_id, hold.buyer_id)] += hold.stock
        by_drop[hold.drop_id] += hold.stock
    allowance = BuyerAllowance.__table__
    uow.session.execute(
        allowance.update()
        .where(allowance.c.drop_id == sa.bindparam("d"), allowance.c.buyer_id == sa.bindparam("b"))
        .values(taken=allowance.c.taken - sa.bindparam("q")),
        [{"d": d, "b": b, "q": q} for (d, b), q in sorted(by_buyer.items())],
    )
    for drop_id, units in sorted(by_drop.items()):
        uow.session.execute(_GIVE_BACK, {"d": drop_id, "q": units})


def release_expired_holds(uow, batch_size: int, grace_seconds: float = 0) -> int:
    """Release up to `batch_size` holds whose time ran out `grace_seconds` ago; replicas share
    the work (SKIP LOCKED)."""
    expired = uow.session.scalars(
        sa.select(Reservation)
        .options(orm.lazyload(Reservation.drop))
        .where(
            Reservation.status == HELD,
            Reservation.hold_expires_at <= sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, grace_seconds),
        )
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


def sweep_until_stopped(
    stop: threading.Event,
    uow_factory,
    batch_size: int,
    interval_seconds: float,
    grace_seconds: float = 0,
    on_turn: Callable[[], None] = lambda: None,
) -> None:
    """Release expired holds and announce drops until `stop` is set; a full batch means more
    holds are waiting, so no pause. `on_turn` runs every turn (the liveness heartbeat)."""
    while not stop.is_set():
        on_turn()
        released = 0
        try:
            with uow_factory() as uow:
                released = release_expired_holds(uow, batch_size, grace_seconds)
                uow.commit()
            with uow_factory() as uow:
                announce_drops(uow)
                uow.commit()
        except sa.exc.SQLAlchemyError:
            log.warning("sweep failed, trying again later", exc_info=True)
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


def _note_order_version(reservation: Reservation, version: int | None) -> None:
    """Remember that the reservation now serves order version `version` (None: not known)."""
    if version is not None and version > reservation.order_version:
        reservation.order_version = version


def _accept_order_event(envelope, reservation: Reservation) -> bool:
    """False for an order event older than what the reservation already acted on: a retried or
    delayed delivery (a late payment re-held the unit after `order.expired` was sent, say, or a
    retried `order.confirmed` after `order.cancelled`). Applying it would undo the newer state, so
    it is dropped. Otherwise the reservation notes the event's version and True: an equal version
    is applied again, harmlessly, and events without a version (from a checkout older than
    versioning) are applied as they come."""
    version = envelope.data.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        return True
    if version < reservation.order_version:
        log.warning("stale order event ignored", extra={
            "event_type": envelope.type, "event_version": version, "order_version": reservation.order_version})
        return False
    _note_order_version(reservation, version)
    return True


def on_order_confirmed(envelope, uow) -> None:
    order_id = _order_id_of(envelope)
    reservation = find_reservation(order_id, uow, for_update=True)
    if reservation is None:
        raise PermanentFailure("a confirmed order has no reservation")
    if not _accept_order_event(envelope, reservation):
        return
    if reservation.status == HELD:
        reservation.status = SOLD
    elif reservation.status == RELEASED:
        _sell_again(reservation, uow)


def _sell_again(reservation: Reservation, uow) -> None:
    """A confirmation that reached us after the hold was given back (the consumer was down past
    the grace period): take the units again if the drop still has them, else say the order lost
    them, so checkout cancels and refunds it. Never an oversell, never money kept without goods."""
    try:
        with uow.session.begin_nested():
            _take_again(reservation, uow)
        reservation.status = SOLD
        log.warning("released hold sold again after a late confirmation", extra={"drop_id": str(reservation.drop_id)})
    except (SoldOut, SaleNotOpen, LimitExceeded) as refusal:
        log.error("a confirmed order lost its units", extra={"drop_id": str(reservation.drop_id), "reason": refusal.slug})
        uow.publish("reservation.lost", {"order_id": str(reservation.order_id), "drop_id": str(reservation.drop_id),
                                         "quantity": reservation.quantity, "reason": refusal.slug})


def on_order_ended(envelope, uow) -> None:
    """A cancelled or expired order gives its stock back, whether it was held or already sold."""
    order_id = _order_id_of(envelope)
    reservation = find_reservation(order_id, uow, for_update=True)
    if reservation is None:
        log.warning("no reservation to release", extra={"event_type": envelope.type})
        return
    if not _accept_order_event(envelope, reservation):
        return
    if reservation.status != RELEASED:
        _release([reservation], uow)


EVENT_HANDLERS = {
    "order.confirmed": on_order_confirmed,
    "order.cancelled": on_order_ended,
    "order.expired": on_order_ended,
    "order.payment_failed": on_order_ended,
}
