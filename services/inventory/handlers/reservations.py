"""Holds on the order path (`POST /reservations`), and a hold's sale or release over HTTP.

Lock order, so no two transactions can deadlock: reservation row (releases, renewals) → buyer
allowance rows (sorted) → stock shard rows (in shard order whenever a transaction may wait for a
second one; see `take_stock`) → the drop row and its announcements. A new reservation is inserted
before its stock is taken, keeping a stock row locked only for the decrement and the commit; its
row is one nobody else can be waiting for. A batch of holds (`reserve_many`) keeps the same order
in one transaction per drop: its buyers' allowance rows sorted, then one take of the batch's units.

The insert waits only on another version of the same order id's row not yet committed
(checkout's duplicates of one order can reach inventory together, and one may be released
meanwhile): a release writes that version after the allowances it gives back
(`Stock.give_back`), and a retake of released units (a renewal, a late sale) after the allowance
it takes (`Stock.take_again`), so the insert, which comes after its allowance, never waits on it.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Callable

import sqlalchemy as sa
from sqlalchemy import orm

from services.inventory.commands import ReserveStock
from services.inventory.errors import (
    CountryNotAllowed,
    DropNotFound,
    InviteOnly,
    LimitExceeded,
    NotEnoughStock,
    NotInvitePhase,
    ReservationNotFound,
    ReservationSold,
    SaleNotOpen,
    SoldOut,
    StaleOrderVersion,
)
from services.inventory.handlers.drops import SHARDS, announce, available_units, parse_id
from services.inventory.models import DROP_SOLD_OUT, HELD, RELEASED, SOLD, Drop, Product, Reservation
from shared.errors import DatabaseUnavailable, Problem
from shared.logs import bind_order_id, log_context
from shared.sql import Statement

log = logging.getLogger("floodgate.inventory")


def find_reservation(session: orm.Session, order_id: uuid.UUID, for_update: bool = False) -> Reservation | None:
    query = sa.select(Reservation).where(Reservation.order_id == order_id)
    if for_update:
        query = query.with_for_update(of=Reservation)
    return session.scalars(query).first()


def note_order_version(reservation: Reservation, version: int | None) -> None:
    """Remember that the reservation now serves order version `version` (None: not known)."""
    if version is not None and version > reservation.order_version:
        reservation.order_version = version


def check_retaking_version(reservation: Reservation, version: int | None) -> None:
    """A request that may take a released reservation again (a sale, a renewal) must be for the
    order's newest state: one for an older version than the one that released it (a cancel, say)
    is refused, as the consumer drops a stale event. The caller notes the version once the units
    are taken again (`Stock.take_again` says why)."""
    if reservation.status == RELEASED and version is not None and version < reservation.order_version:
        raise StaleOrderVersion()


def reserve(cmd: ReserveStock, uow, hold_ttl_seconds: int) -> tuple[Reservation, bool]:
    """Hold stock for an order; idempotent by order id. Returns the reservation and whether it is new.

    `hold_ttl_seconds` is the service default; a drop may set its own.
    """
    bind_order_id(cmd.order_id)
    if cmd.renew:
        existing = find_reservation(uow.session, cmd.order_id, for_update=True)
        if existing is not None:
            check_retaking_version(existing, cmd.order_version)
            note_order_version(existing, cmd.order_version)  # written with the status, after the allowance
            if existing.status == RELEASED:
                # A payment that arrived after its hold was given back: hold the same units again.
                renewal = replace(cmd, drop_id=existing.drop_id, buyer_id=existing.buyer_id, quantity=existing.quantity)
                return _hold(renewal, uow.session, uow.publish, hold_ttl_seconds, renewing=existing), True
            if existing.status == HELD:
                # Expired but not swept yet (the sweeper waits a grace period): the renewal holds
                # it for a whole TTL from now, so the sweeper cannot give it away meanwhile.
                _extend(existing, uow.session, hold_ttl_seconds)
            return existing, False
    # Nearly every request on drop day is a new order id: no look-up first. A repeat finds its
    # reservation when the insert (or a refusal before it) sends it to the existing one below.
    try:
        return _hold(cmd, uow.session, uow.publish, hold_ttl_seconds), True
    except (LimitExceeded, SoldOut, SaleNotOpen, InviteOnly, NotInvitePhase, CountryNotAllowed, DropNotFound,
            _LostRace):
        # The order id may already have its reservation: made by this order's earlier attempt
        # (before the drop closed, say), or by a concurrent request that committed first, whose
        # allowance and stock updates ours waited on. That reservation, not our refusal, is the
        # answer.
        uow.rollback()
        winner = find_reservation(uow.session, cmd.order_id)
        if winner is None:
            raise
        return winner, False


def _extend(reservation: Reservation, session: orm.Session, hold_ttl_seconds: int) -> None:
    found = _drop_now_and_remaining(session, reservation.drop_id)
    if found is not None:
        drop, now, _ = found
        reservation.hold_expires_at = max(reservation.hold_expires_at, _hold_expires_at(drop, now, hold_ttl_seconds))


def _hold_expires_at(drop: Drop, now: datetime, hold_ttl_seconds: int) -> datetime:
    """When a hold made (or renewed) at `now` expires: after the drop's own TTL, else the
    service's `hold_ttl_seconds`."""
    return now + timedelta(seconds=drop.hold_ttl_seconds or hold_ttl_seconds)


# What a hold reads of its drop, the database's clock and the units left, in one statement. The
# drop comes back as columns, not through the ORM's loading (a third of the hold's Python time).
_DROP_FIELDS = ("id", "product_id", "quantity", "opens_at", "closes_at", "per_buyer_limit", "invite_only_until",
                "invite_tier", "shipping_countries", "hold_ttl_seconds")
PRODUCT_FIELDS = ("sku", "name", "description", "price_amount", "currency")
_DROP_NOW_AND_REMAINING = Statement(
    f"SELECT {', '.join('d.' + field for field in _DROP_FIELDS)}, {', '.join('p.' + field for field in PRODUCT_FIELDS)}, "
    "now(), (SELECT coalesce(sum(available), 0) FROM drop_stock_shards WHERE drop_id = d.id) "
    "FROM drops d JOIN products p ON p.id = d.product_id WHERE d.id = :drop_id"
)


def product_of(product_id: uuid.UUID, values) -> Product:
    """A product from its id and the values of PRODUCT_FIELDS, in that order, as a statement
    read them (not added to the session)."""
    return Product(id=product_id, **dict(zip(PRODUCT_FIELDS, values)))


def _drop_now_and_remaining(session: orm.Session, drop_id: uuid.UUID) -> tuple[Drop, datetime, int] | None:
    """The drop (with its product; neither is added to the session), the database's now and the
    drop's available units; None for an unknown drop."""
    row = _DROP_NOW_AND_REMAINING.first(session, {"drop_id": drop_id})
    if row is None:
        return None
    drop_values = dict(zip(_DROP_FIELDS, row))
    product = product_of(drop_values["product_id"], row[len(_DROP_FIELDS):])
    now, remaining = row[-2:]
    return Drop(**drop_values, product=product), now, remaining


# The hold's writes go straight to the driver (shared.sql): a dozen statements per order, and
# SQLAlchemy's execution machinery cost as much CPU as sending them.
_TAKE_BUYER_ALLOWANCE = Statement(
    "INSERT INTO buyer_allowances (drop_id, buyer_id, taken) VALUES (:drop_id, :buyer_id, :quantity) "
    "ON CONFLICT (drop_id, buyer_id) DO UPDATE SET taken = buyer_allowances.taken + :quantity "
    "WHERE buyer_allowances.taken + :quantity <= :limit RETURNING taken"
)
_INSERT_RESERVATION = Statement(
    "INSERT INTO reservations (order_id, drop_id, buyer_id, quantity, status, hold_expires_at, order_version) "
    "VALUES (:order_id, :drop_id, :buyer_id, :quantity, :status, :hold_expires_at, :order_version)"
)


def _new_reservation(cmd: ReserveStock, drop: Drop, expires_at: datetime) -> dict:
    """The row a new hold inserts (_INSERT_RESERVATION's parameters)."""
    return dict(order_id=cmd.order_id, drop_id=drop.id, buyer_id=cmd.buyer_id, quantity=cmd.quantity,
                status=HELD, hold_expires_at=expires_at, order_version=cmd.order_version or 1)


def _shown(values: dict, drop: Drop, now: datetime) -> Reservation:
    """A reservation inserted by statement at `now` (the transaction's time, which its
    `created_at` defaults to), as the answer shows it (not added to the session)."""
    reservation = Reservation(**values, created_at=now)
    reservation.drop = drop
    return reservation


class _LostRace(Exception):
    """Another transaction inserted a reservation with this order id first."""


def _hold(cmd: ReserveStock, session: orm.Session, publish: Callable[[str, dict], None], hold_ttl_seconds: int,
          renewing: Reservation | None = None, paid: bool = False) -> Reservation:
    """`paid`: the units of a reservation paid for in time are taken again for its sale, window
    or not (`hold_again`)."""
    found = _drop_now_and_remaining(session, cmd.drop_id)
    if found is None:
        raise DropNotFound()
    drop, now, remaining = found
    drop.check_reservable(cmd.quantity, now, cmd.buyer_tier, cmd.shipping_country, renewal=renewing is not None,
                          window=not paid, invited_only=cmd.invited_only)
    if remaining < cmd.quantity:
        raise _too_few(remaining)  # no stock in sight: refuse without taking a single row lock

    taken = _TAKE_BUYER_ALLOWANCE.first(
        session, {"drop_id": drop.id, "buyer_id": cmd.buyer_id, "quantity": cmd.quantity, "limit": drop.per_buyer_limit})
    if taken is None:
        raise _limit_exceeded(drop)

    # The reservation is written before the stock is taken, so the transaction holds a stock
    # row's lock for as little time as possible: the decrement, then the commit.
    expires_at = _hold_expires_at(drop, now, hold_ttl_seconds)
    if renewing is not None:
        reservation = renewing
        reservation.status, reservation.hold_expires_at = HELD, expires_at
        session.flush()
    else:
        values = _new_reservation(cmd, drop, expires_at)
        try:
            # A statement rather than Session.add + flush: the order path's hottest one.
            _INSERT_RESERVATION.run(session, values)
        except sa.exc.IntegrityError:
            raise _LostRace() from None
        # What the response shows; not added to the session, which has nothing left to flush.
        reservation = _shown(values, drop, now)

    shard_left = take_stock(session, drop.id, cmd.quantity)
    if shard_left is None:  # fewer units under the rows' locks than at the read: the caller rolls back
        raise _too_few(min(session.scalar(sa.select(available_units(drop.id))), cmd.quantity - 1))
    _announce_if_sold_out(session, publish, drop, shard_left)
    return reservation


def _announce_if_sold_out(session: orm.Session, publish: Callable[[str, dict], None], drop: Drop,
                          shard_left: int) -> None:
    """Announce `drop.sold_out` when a take left its (last) row empty and no row of the drop
    holds a unit; the rows are summed only then, as most takes leave their row some units."""
    if shard_left == 0 and session.scalar(sa.select(available_units(drop.id))) == 0:
        announce(session, publish, [drop.id], DROP_SOLD_OUT, {drop.id: drop.product_id})


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
TAKE_FROM_UNLOCKED_SHARD = Statement(_TAKE_FROM_ONE_SHARD.format(order="random()", skip="SKIP LOCKED"))
# The first shard with stock, waiting for its lock; in shard order, like every statement that may
# wait for a second shard row while holding one, so they cannot deadlock.
TAKE_FROM_ANY_SHARD = Statement(_TAKE_FROM_ONE_SHARD.format(order="shard", skip=""))


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
        _SAVEPOINT.run(session, {})
        left = statement.scalar(session, params)
        if left is not None:
            return left
        _ROLLBACK_TO_SAVEPOINT.run(session, {})  # drop the locks on rows that had emptied meanwhile
    # Every row of the drop, judged in Python on the values it has once locked: a filter in the
    # statement would judge on its snapshot, and a row empty then, refilled while this waits for
    # another row's lock, would never be considered (a sold-out while the drop has the units).
    locked = session.execute(
        sa.select(SHARDS.c.shard, SHARDS.c.available)
        .where(SHARDS.c.drop_id == drop_id)
        .order_by(SHARDS.c.shard)
        .with_for_update()
    ).all()
    rows = [(shard, available) for shard, available in locked if available > 0]
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
_SAVEPOINT = Statement("SAVEPOINT take_stock")
_ROLLBACK_TO_SAVEPOINT = Statement("ROLLBACK TO SAVEPOINT take_stock")


def _limit_exceeded(drop: Drop) -> LimitExceeded:
    return LimitExceeded(f"A buyer may reserve at most {drop.per_buyer_limit} of this drop.")


def _too_few(remaining: int) -> SoldOut:
    """The refusal of an order for more units than `remaining`: sold out only when none are
    left; otherwise how many may still be ordered (a buyer told "sold out" next to "1 left" was
    never told to order fewer)."""
    if remaining <= 0:
        return SoldOut("No stock is left for this drop.", remaining=0)
    return NotEnoughStock(f"Only {remaining} unit(s) of this drop are left: order {remaining} or fewer.",
                          remaining=remaining)


def hold_again(reservation: Reservation, session: orm.Session, publish: Callable[[str, dict], None]) -> None:
    """Hold a released reservation's units again for its sale: checkout confirmed its payment
    within the hold, and only the sale came late (past the hold and the sweeper's grace). So
    the allowance and the stock are checked, not the window: a sale reaching inventory after
    the drop closed took the units of an order paid in time, refunded it, and left them unsold
    for good. SoldOut or LimitExceeded when they cannot be taken."""
    renewal = ReserveStock(order_id=reservation.order_id, drop_id=reservation.drop_id,
                           buyer_id=reservation.buyer_id, quantity=reservation.quantity, renew=True)
    _hold(renewal, session, publish, hold_ttl_seconds=0, renewing=reservation, paid=True)


@dataclass(frozen=True)
class HoldOutcome:
    """One order's answer in a batch of holds: its reservation and whether this request made it
    (201, else 200), or the refusal `POST /reservations` would have answered it with."""

    reservation: Reservation | None = None
    created: bool = False
    refusal: Problem | None = None

    @property
    def status(self) -> int:
        if self.refusal is not None:
            return self.refusal.status
        return 201 if self.created else 200


# The single hold's insert, answering nothing (no error) for an order id that has its reservation.
_INSERT_NEW_RESERVATION = Statement(_INSERT_RESERVATION.sql + " ON CONFLICT (order_id) DO NOTHING RETURNING order_id")
_GIVE_BACK_BUYER_ALLOWANCE = Statement(
    "UPDATE buyer_allowances SET taken = taken - :quantity WHERE drop_id = :drop_id AND buyer_id = :buyer_id"
)
_GROUP_SAVEPOINT = Statement("SAVEPOINT hold_batch")
# A statement failed, or no pooled connection came in time (each transaction of a batch takes
# one again): the orders it was for were not held, and the batch's other answers stand.
_DATABASE_FAILED = (sa.exc.DBAPIError, sa.exc.TimeoutError)
_ROLLBACK_TO_GROUP_SAVEPOINT = Statement("ROLLBACK TO SAVEPOINT hold_batch")


def reserve_many(cmds: list[ReserveStock], uow, hold_ttl_seconds: int, request_ids: list[str | None] | None = None
                 ) -> list[HoldOutcome]:
    """Hold stock for several orders, answering each exactly as `reserve` would; commits.

    What a checkout process's concurrent orders cost together instead of one by one: one request,
    and per drop one transaction, one read of the drop and one take from its stock rows for all
    of them, each order checked and refused as `reserve` checks it (window, tier, country, units
    left, the buyer's allowance). An order id that already has a reservation, a renewal, an order
    the units read would cover but for this batch's own holds (units may have come back since the
    read), and every order of a batch whose units the stock rows do not all hold are then answered
    by `reserve` on its own, in its own transaction: the same code, so near the end of the stock
    the last units go one order at a time.
    `request_ids`: the request each order came from, for the log line of each hold.
    """
    outcomes: list[HoldOutcome | None] = [None] * len(cmds)
    by_drop: dict[uuid.UUID, list[int]] = {}
    for index, cmd in enumerate(cmds):
        if not cmd.renew:
            by_drop.setdefault(cmd.drop_id, []).append(index)
    for drop_id in sorted(by_drop):
        # One transaction per drop: it keeps the global lock order (every allowance row before any
        # stock row), which a transaction taking one drop's stock and then another's allowances
        # would break against a release spanning both drops.
        indices = sorted(by_drop[drop_id], key=lambda i: (cmds[i].buyer_id, i))  # a buyer's orders as sent
        try:
            _hold_together(cmds, indices, uow, hold_ttl_seconds, outcomes)
            _commit_keeping_answers(uow)
        except _DATABASE_FAILED:
            # What committed before stays answered; these orders were not held: each says so.
            _abandon(uow)
            for index in indices:
                outcomes[index] = HoldOutcome(refusal=_database_unavailable())
    for index, cmd in enumerate(cmds):
        if outcomes[index] is None:
            try:
                reservation, created = reserve(cmd, uow, hold_ttl_seconds)
                _commit_keeping_answers(uow)
                outcomes[index] = HoldOutcome(reservation, created)
            except Problem as refusal:
                uow.rollback()
                outcomes[index] = HoldOutcome(refusal=refusal)
            except _DATABASE_FAILED:
                _abandon(uow)
                outcomes[index] = HoldOutcome(refusal=_database_unavailable())
    for index, outcome in enumerate(outcomes):
        request_id = request_ids[index] if request_ids else None
        with log_context(request_id=request_id, order_id=str(cmds[index].order_id)):
            log.info("hold", extra={"status": outcome.status, "batch": len(cmds)})
    return outcomes


def _commit_keeping_answers(uow) -> None:
    """Commit a batch's transaction, keeping what it read readable as read: a later transaction's
    rollback expires the session's objects, and an order answered with its reservation keeps one."""
    uow.commit()
    uow.session.expunge_all()


def _database_unavailable() -> DatabaseUnavailable:
    return DatabaseUnavailable("The database did not answer; nothing was held for this order. Try again shortly.")


def _abandon(uow) -> None:
    """Roll back after a database error, whatever state the connection is in."""
    try:
        uow.rollback()
    except sa.exc.DBAPIError:
        pass  # the connection is gone: the pool replaces it, the transaction died with it


def _hold_together(cmds: list[ReserveStock], indices: list[int], uow, hold_ttl_seconds: int,
                   outcomes: list[HoldOutcome | None]) -> None:
    """Hold one drop's orders of a batch in the transaction, or refuse them as `reserve` would;
    leave an outcome None (to be answered one by one) for an order id that already has its
    reservation, for an order refused only for the units this batch set aside before it, and for
    every order of a batch whose units the drop's stock rows do not all hold. Sold out here means
    fewer units than the order's own quantity at the read, as `reserve` judges it."""
    session = uow.session
    found = _drop_now_and_remaining(session, cmds[indices[0]].drop_id)
    if found is None:
        return
    drop, now, remaining = found
    expires_at = _hold_expires_at(drop, now, hold_ttl_seconds)
    _GROUP_SAVEPOINT.run(session, {})
    held: list[tuple[int, dict]] = []
    units = 0
    waited = False  # whether an allowance's update (which may wait for another hold) came since the read
    for index in indices:
        cmd = cmds[index]
        if any(values["order_id"] == cmd.order_id for _, values in held):
            continue  # the same order twice in one batch: the second is a repeat, answered below
        allowance = {"drop_id": drop.id, "buyer_id": cmd.buyer_id, "quantity": cmd.quantity}
        try:
            drop.check_reservable(cmd.quantity, now, cmd.buyer_tier, cmd.shipping_country, invited_only=cmd.invited_only)
            if remaining < cmd.quantity:
                if waited:
                    # The read may be seconds old: units may have come back while an earlier
                    # order's allowance waited. `reserve` answers it after the commit, afresh.
                    continue
                raise _too_few(remaining)  # too few units at a read just made, as `reserve` refuses it
            if remaining < units + cmd.quantity:
                # Short only because of this batch's own holds, on a read that units may have come
                # back since (a release, an expiry, a restock): a sold-out here would be final for
                # checkout. `reserve` answers it on its own after the commit, from a fresh read.
                continue
            waited = True
            if _TAKE_BUYER_ALLOWANCE.first(session, {**allowance, "limit": drop.per_buyer_limit}) is None:
                raise _limit_exceeded(drop)
        except Problem as refusal:
            # as `reserve` answers it: the order's own reservation, if it has one, else the refusal
            existing = find_reservation(session, cmd.order_id)
            outcomes[index] = HoldOutcome(existing) if existing is not None else HoldOutcome(refusal=refusal)
            continue
        values = _new_reservation(cmd, drop, expires_at)
        if _INSERT_NEW_RESERVATION.first(session, values) is None:
            # The order id has its reservation (an earlier attempt's, committed meanwhile): that is
            # the answer, found on its own below; the allowance row is still ours to correct.
            _GIVE_BACK_BUYER_ALLOWANCE.run(session, allowance)
            continue
        held.append((index, values))
        units += cmd.quantity
    if not held:
        return
    shard_left = take_stock(session, drop.id, units)
    if shard_left is None:
        # Not all of them: each on its own instead, refusals included, since the units left and
        # the allowances they were judged on counted this batch's holds, now rolled back.
        _ROLLBACK_TO_GROUP_SAVEPOINT.run(session, {})
        for index in indices:
            outcomes[index] = None
        return
    _announce_if_sold_out(session, uow.publish, drop, shard_left)
    for index, values in held:
        outcomes[index] = HoldOutcome(_shown(values, drop, now), created=True)


def release(order_id: str, uow) -> Reservation:
    """Give a held reservation's stock back (checkout abandoning an order). Idempotent."""
    parsed = parse_id(order_id, ReservationNotFound)
    bind_order_id(parsed)
    reservation = uow.reservations.for_update(parsed)
    if reservation is None:
        raise ReservationNotFound()
    if reservation.status == SOLD:
        raise ReservationSold("This reservation was paid for; cancel the order to release it.")
    if reservation.status == HELD:
        uow.stock.give_back([reservation])
    return reservation


def sell(order_id: str, uow, order_version: int | None = None) -> Reservation:
    """Turn an order's hold into a sale now: checkout calls this as it confirms a payment, so a
    paid order's units never wait on the event (`order.confirmed` repeats it, harmlessly). A hold
    already given back is taken again if the units are still there; else SoldOut (or another
    refusal) and checkout refunds. `order_version` is the confirmed order's."""
    parsed = parse_id(order_id, ReservationNotFound)
    bind_order_id(parsed)
    sold = uow.reservations.sell_held(parsed, order_version)
    if sold is not None:
        return sold
    reservation = uow.reservations.for_update(parsed)
    if reservation is None:
        raise ReservationNotFound()
    check_retaking_version(reservation, order_version)
    if reservation.status == RELEASED:
        uow.stock.take_again(reservation)
    note_order_version(reservation, order_version)
    reservation.status = SOLD
    return reservation
