"""Products and drops (the admin's side), a drop as a client sees it, and the announcements of
drops that open or sell out."""
from __future__ import annotations

import collections
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Iterable

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.dialects import postgresql as pg

from services.inventory.commands import AddProduct, ChangeDrop, ScheduleDrop
from services.inventory.errors import DropNotFound, InvalidDrop, ProductNotFound, SkuTaken
from services.inventory.models import (DROP_OPENED, DROP_SOLD_OUT, OPENING_FIXED_WITHIN, Drop, DropAnnouncement, Product,
                                       StockShard, spread)

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
    changes_in: float | None = None  # seconds until the clock changes `state` (None: never again)

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
            changes_in=_seconds_until(drop.next_state_change(now), now),
        )


def _seconds_until(moment: datetime | None, now: datetime) -> float | None:
    return None if moment is None else (moment - now).total_seconds()


# A drop has at most this much stock over its life (quantity plus restocks): 422 beyond.
MAX_TOTAL_STOCK = 10_000_000

SHARDS = StockShard.__table__


def available_units(drop_id):
    """A scalar subquery: the drop's available units, summed over its shard rows."""
    return (
        sa.select(sa.func.coalesce(sa.func.sum(SHARDS.c.available), 0))
        .where(SHARDS.c.drop_id == drop_id)
        .scalar_subquery()
    )


def _database_now(uow) -> datetime:
    # One clock for every process: the database's, fixed for the whole transaction.
    return uow.session.scalar(sa.select(sa.func.now()))


def parse_id(raw: str | uuid.UUID, not_found: type[Exception]) -> uuid.UUID:
    """The id in a request's path (or one parsed already), or `not_found` when it is not a UUID."""
    try:
        return uuid.UUID(str(raw))
    except ValueError:
        raise not_found() from None


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
    product = uow.session.get(Product, parse_id(product_id, ProductNotFound))
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


def show_drop(drop_id: str | uuid.UUID, uow) -> DropView:
    row = uow.session.execute(
        sa.select(Drop, sa.func.now(), available_units(Drop.id))
        .where(Drop.id == parse_id(drop_id, DropNotFound))
        .execution_options(populate_existing=True)
    ).first()
    if row is None:
        raise DropNotFound()
    drop, now, remaining = row
    return DropView.of(drop, now, remaining)


# One statement, so both figures are of one moment: a hold moves a unit from the stock rows to
# the buyer's allowance in one transaction, and is seen in both or in neither.
_HOLDERS = sa.text(
    "SELECT (SELECT coalesce(sum(available), 0) FROM drop_stock_shards WHERE drop_id = d.id) AS remaining, "
    "(SELECT count(*) FROM buyer_allowances WHERE drop_id = d.id AND taken > 0 "
    " AND buyer_id = ANY(CAST(:buyer_ids AS varchar[]))) AS holding "
    ", d.opens_at, d.closes_at, d.invite_only_until FROM drops d WHERE d.id = :drop_id"
).bindparams(sa.bindparam("drop_id", type_=pg.UUID(as_uuid=True)))


def holders(drop_id: str, buyer_ids: list[str], uow) -> dict:
    """The drop's remaining units, and how many of `buyer_ids` hold or bought a unit of it, at
    one moment: the waiting room's admitter counts the passes in play whose buyer has no unit
    yet against the units left (an order between its hold and its commit would otherwise count
    twice, once as a pass and once as a unit gone). With them, when the drop's window opens and
    closes, and when its invite-only phase ends: the admitter admits nobody before the drop is
    open to everyone, and closes a line whose drop has closed."""
    drop = parse_id(drop_id, DropNotFound)
    row = uow.session.execute(_HOLDERS, {"drop_id": drop, "buyer_ids": sorted(set(buyer_ids))}).first()
    if row is None:
        raise DropNotFound()
    return {"drop_id": drop, "remaining": int(row.remaining), "holding": int(row.holding), "opens_at": row.opens_at,
            "closes_at": row.closes_at, "invite_only_until": row.invite_only_until}


def drop_stock(drop_id: str, uow) -> dict:
    """A drop's units for the control room: total, remaining, held and sold (they add up)."""
    drop = parse_id(drop_id, DropNotFound)
    figures = uow.stock.figures(drop)
    if figures is None:
        raise DropNotFound()
    return {"drop_id": drop, **figures}


def change_drop(drop_id: str, cmd: ChangeDrop, uow) -> DropView:
    """Move a drop's opening before it opens (postpone it, or bring it forward) and its close
    (extend or shorten, even reopen a closed drop), add stock, and/or move the end or correct the
    tier of an invite-only phase that has not ended (`Drop.check_new_window` says the rules).

    Shard rows are locked before the drop row, as the sweeper does when it gives expired holds
    back (the lock order is in `handlers.reservations`). The change is checked against the drop
    row it has locked: two admins' changes at once are checked one after the other, each against
    what the other left (checked against what each read, a close and an opening moved at once
    could cross, and a phase end the other's new opening passed be kept).
    """
    view = show_drop(drop_id, uow)
    drops = Drop.__table__
    if cmd.add_quantity:
        _restock(uow, view.id, view.stock_shards, cmd.add_quantity)
    # The drop row after the shard rows, the order the sweeper takes them in (it gives units
    # back, then counts the drop's expired holds), and with the lock its update takes anyway (FOR
    # NO KEY UPDATE): the key-share locks holds take on it through their rows' foreign keys never
    # wait for it.
    drop = uow.session.get(Drop, view.id, with_for_update={"key_share": True}, populate_existing=True)
    window = {"opens_at": cmd.opens_at, "closes_at": cmd.closes_at, "invite_only_until": cmd.invite_only_until}
    values = {name: moment for name, moment in window.items() if moment is not None}
    if values:
        drop.check_new_window(_database_now(uow), **window)
    if cmd.invite_tier is not None:
        drop.check_new_tier(_database_now(uow))
        values["invite_tier"] = cmd.invite_tier
    if cmd.add_quantity:
        if drop.quantity + drop.restocked + cmd.add_quantity > MAX_TOTAL_STOCK:  # the restock rolls back
            raise InvalidDrop("add_quantity", f"A drop holds at most {MAX_TOTAL_STOCK} units over its life.")
        values["restocked"] = drops.c.restocked + cmd.add_quantity
        # Stock came back: the next time it runs out is news again.
        announcements = DropAnnouncement.__table__
        uow.session.execute(
            announcements.delete().where(
                announcements.c.drop_id == view.id, announcements.c.event_type == DROP_SOLD_OUT
            )
        )
    if values:
        changed = drops.update().where(drops.c.id == view.id).values(**values)
        if cmd.opens_at is not None:
            # the opening checked against the transaction's start: by the statement's own clock too
            changed = changed.where(drops.c.opens_at > sa.func.clock_timestamp() + OPENING_FIXED_WITHIN)
        if uow.session.execute(changed).rowcount == 0:
            raise InvalidDrop("opens_at", "The drop opened, or opens within seconds, as this change came in; its "
                                          "opening cannot move (its close can).")
    log.info(
        "drop changed",
        extra={"drop_id": str(view.id), "opens_at": cmd.opens_at and cmd.opens_at.isoformat(),
               "closes_at": cmd.closes_at and cmd.closes_at.isoformat(),
               "invite_only_until": cmd.invite_only_until and cmd.invite_only_until.isoformat(),
               "add_quantity": cmd.add_quantity, "invite_tier": cmd.invite_tier},
    )
    return show_drop(view.id, uow)


def _restock(uow, drop_id: uuid.UUID, shard_count: int, units: int) -> None:
    # Every shard row is updated in shard order, the order a multi-shard hold locks them in,
    # those that get no unit too: the restock then waits for any hold still taking from one of
    # them, which may be announcing `drop.sold_out`, so the announcement's deletion below comes
    # after it and the next sell-out is announced again.
    uow.session.execute(
        SHARDS.update()
        .where(SHARDS.c.drop_id == drop_id, SHARDS.c.shard == sa.bindparam("s"))
        .values(available=SHARDS.c.available + sa.bindparam("q")),
        [{"s": shard, "q": q} for shard, q in enumerate(spread(units, shard_count))],
    )


def announce(session: orm.Session, publish: Callable[[str, dict], None], drop_ids: Iterable[uuid.UUID],
             event_type: str, product_ids: dict) -> list[uuid.UUID]:
    """Publish `event_type` for each drop that has not had it yet; return those announced now."""
    announcements = DropAnnouncement.__table__
    fresh = session.scalars(
        pg.insert(announcements)
        .values([{"drop_id": drop_id, "event_type": event_type} for drop_id in drop_ids])
        .on_conflict_do_nothing()
        .returning(announcements.c.drop_id)
    ).all()
    for drop_id in fresh:
        publish(event_type, {"drop_id": str(drop_id), "product_id": str(product_ids[drop_id])})
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
        (DROP_SOLD_OUT, open_now.where(not_announced(DROP_SOLD_OUT), available_units(Drop.id) == 0)),
    ):
        found = dict(uow.session.execute(query).all())
        if event_type == DROP_SOLD_OUT and found:
            found = {drop_id: found[drop_id] for drop_id in _without_stock_now(uow.session, found)}
        if found:
            count += len(announce(uow.session, uow.publish, sorted(found), event_type, found))
    return count


def _without_stock_now(session: orm.Session, drop_ids: Iterable[uuid.UUID]) -> list[uuid.UUID]:
    """Of `drop_ids`, those whose shard rows hold no unit once locked (shared, in the order holds
    and restocks lock them) and read as they are now. A restock in flight is waited for and its
    units counted; one that starts after waits for this transaction, so it deletes the
    announcement made here and the drop's next sell-out is announced again."""
    rows = session.execute(
        sa.select(SHARDS.c.drop_id, SHARDS.c.available)
        .where(SHARDS.c.drop_id.in_(list(drop_ids)))
        .order_by(SHARDS.c.drop_id, SHARDS.c.shard)
        .with_for_update(read=True)
    ).all()
    left = collections.Counter()
    for drop_id, available in rows:
        left[drop_id] += available
    return [drop_id for drop_id in drop_ids if left[drop_id] == 0]
