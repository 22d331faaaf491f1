"""Products, drops (a sale window over a fixed stock), reservations and buyer allowances.

A drop's state is computed from the clock and its stock whenever it is asked for, never stored,
so nothing has to flip it at `opens_at` or `closes_at`.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Iterable

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.dialects import postgresql as pg

from services.inventory.errors import (CountryNotAllowed, InvalidDrop, InviteOnly, LimitExceeded, NotInvitePhase,
                                      SaleNotOpen)
from shared import admin_actions

HELD, SOLD, RELEASED = "held", "sold", "released"
SCHEDULED, OPEN, SOLD_OUT, CLOSED = "scheduled", "open", "sold_out", "closed"
DROP_OPENED, DROP_SOLD_OUT = "drop.opened", "drop.sold_out"
# An opening this close can no longer move: holds read the drop without locking it, and one
# made at the old opening while the change commits would sit in a window that no longer has it.
OPENING_FIXED_WITHIN = timedelta(seconds=5)
MAX_STOCK_SHARDS = 64


class Base(orm.DeclarativeBase):
    pass


# What admins did in this service (shared/admin_actions.py).
ADMIN_ACTIONS = admin_actions.define_table(Base.metadata)


class Product(Base):
    __tablename__ = "products"
    __table_args__ = (
        sa.CheckConstraint("price_amount >= 0", name="price_not_negative"),
        sa.CheckConstraint("currency ~ '^[A-Z]{3}$'", name="currency_code"),
    )

    id: orm.Mapped[uuid.UUID] = orm.mapped_column(pg.UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    sku: orm.Mapped[str] = orm.mapped_column(sa.String(64), unique=True)
    name: orm.Mapped[str] = orm.mapped_column(sa.String(200))
    description: orm.Mapped[str] = orm.mapped_column(sa.Text, default="")
    price_amount: orm.Mapped[int] = orm.mapped_column(sa.BigInteger)
    currency: orm.Mapped[str] = orm.mapped_column(sa.String(3))

    @property
    def price(self) -> dict:
        return {"amount": self.price_amount, "currency": self.currency}


class Drop(Base):
    __tablename__ = "drops"
    __table_args__ = (
        sa.CheckConstraint("quantity > 0", name="quantity_positive"),
        sa.CheckConstraint("closes_at > opens_at", name="closes_after_opening"),
        sa.CheckConstraint("per_buyer_limit > 0", name="per_buyer_limit_positive"),
        sa.CheckConstraint(f"stock_shards BETWEEN 1 AND {MAX_STOCK_SHARDS}", name="stock_shards_in_range"),
        sa.CheckConstraint("restocked >= 0", name="restocked_not_negative"),
        sa.CheckConstraint("(invite_only_until IS NULL) = (invite_tier IS NULL)", name="invite_phase_complete"),
        sa.CheckConstraint("hold_ttl_seconds IS NULL OR hold_ttl_seconds > 0", name="hold_ttl_positive"),
    )

    id: orm.Mapped[uuid.UUID] = orm.mapped_column(pg.UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    product_id: orm.Mapped[uuid.UUID] = orm.mapped_column(sa.ForeignKey("products.id"), index=True)
    quantity: orm.Mapped[int] = orm.mapped_column(sa.Integer)
    # Units added after scheduling; the stock a drop ever had is quantity + restocked.
    restocked: orm.Mapped[int] = orm.mapped_column(sa.Integer, default=0, server_default="0")
    stock_shards: orm.Mapped[int] = orm.mapped_column(sa.SmallInteger, default=1, server_default="1")
    opens_at: orm.Mapped[datetime] = orm.mapped_column(sa.DateTime(timezone=True))
    closes_at: orm.Mapped[datetime] = orm.mapped_column(sa.DateTime(timezone=True))
    per_buyer_limit: orm.Mapped[int] = orm.mapped_column(sa.Integer, default=1, server_default="1")
    invite_only_until: orm.Mapped[datetime | None] = orm.mapped_column(sa.DateTime(timezone=True), nullable=True)
    invite_tier: orm.Mapped[str | None] = orm.mapped_column(sa.String(64), nullable=True)
    shipping_countries: orm.Mapped[list[str]] = orm.mapped_column(pg.ARRAY(sa.String(2)), default=list,
                                                                   server_default=sa.text("'{}'"))
    hold_ttl_seconds: orm.Mapped[int | None] = orm.mapped_column(sa.Integer, nullable=True)
    created_at: orm.Mapped[datetime] = orm.mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now())
    # Holds of this drop the sweeper released because their time ran out: only grows (/metrics
    # reports it as the counter floodgate_inventory_hold_expiries_total).
    holds_expired: orm.Mapped[int] = orm.mapped_column(sa.BigInteger, default=0, server_default="0")

    product: orm.Mapped[Product] = orm.relationship(lazy="joined", innerjoin=True)

    @classmethod
    def schedule(
        cls,
        product: Product,
        quantity: int,
        opens_at: datetime,
        closes_at: datetime,
        per_buyer_limit: int,
        now: datetime,
        *,
        stock_shards: int = 1,
        invite_only_until: datetime | None = None,
        invite_tier: str | None = None,
        shipping_countries: Iterable[str] = (),
        hold_ttl_seconds: int | None = None,
    ) -> "Drop":
        """A new drop of `quantity` units of `product`, refusing a window that is empty or already over."""
        if closes_at <= opens_at:
            raise InvalidDrop("closes_at", "The drop must close after it opens.")
        if closes_at <= now:
            raise InvalidDrop("closes_at", "The drop would already be closed.")
        if (invite_only_until is None) != (invite_tier is None):
            field = "invite_tier" if invite_tier is None else "invite_only_until"
            raise InvalidDrop(field, "An invite-only phase needs both invite_only_until and invite_tier.")
        if invite_only_until is not None and invite_only_until <= opens_at:
            raise InvalidDrop("invite_only_until", "The invite-only phase must end after the drop opens.")
        if not 1 <= stock_shards <= MAX_STOCK_SHARDS:
            raise InvalidDrop("stock_shards", f"Between 1 and {MAX_STOCK_SHARDS}.")
        return cls(
            id=uuid.uuid4(),
            product=product,
            quantity=quantity,
            restocked=0,
            # More rows than units would only hold zeros.
            stock_shards=min(stock_shards, quantity),
            opens_at=opens_at,
            closes_at=closes_at,
            per_buyer_limit=per_buyer_limit,
            invite_only_until=invite_only_until,
            invite_tier=invite_tier,
            shipping_countries=sorted(set(shipping_countries)),
            hold_ttl_seconds=hold_ttl_seconds,
        )

    def initial_stock(self) -> list["StockShard"]:
        """The drop's quantity spread as evenly as possible over its shard rows."""
        return [
            StockShard(drop_id=self.id, shard=shard, available=units)
            for shard, units in enumerate(spread(self.quantity, self.stock_shards))
        ]

    def state_at(self, now: datetime, remaining: int) -> str:
        if now < self.opens_at:
            return SCHEDULED
        if now >= self.closes_at:
            return CLOSED
        return SOLD_OUT if remaining <= 0 else OPEN

    def next_state_change(self, now: datetime) -> datetime | None:
        """When the clock next changes `state_at` (the opening, then the closing); None once closed."""
        for moment in (self.opens_at, self.closes_at):
            if now < moment:
                return moment
        return None

    def is_invite_only_at(self, now: datetime) -> bool:
        return self.invite_only_until is not None and now < self.invite_only_until

    def check_reservable(
        self,
        quantity: int,
        now: datetime,
        buyer_tier: str | None = None,
        shipping_country: str | None = None,
        renewal: bool = False,
        window: bool = True,
        invited_only: bool = False,
    ) -> None:
        """Refuse what no amount of stock could satisfy: a closed window, a buyer without the
        early-access tier during the invite-only phase, a country the drop does not ship to, or more
        than one buyer may take; with `invited_only`, any time but the invite-only phase. A
        renewal was checked for tier and country when first held; a paid order's sale taken again
        (not `window`) was held inside the window."""
        if window and now < self.opens_at:
            raise SaleNotOpen("The drop has not opened yet.", opens_at=self.opens_at.isoformat())
        if window and now >= self.closes_at:
            raise SaleNotOpen("The drop has closed.", closes_at=self.closes_at.isoformat())
        if invited_only and not self.is_invite_only_at(now):  # a renewal too: checkout's for an invited order
            raise NotInvitePhase("This hold was asked for the drop's invite-only phase, which is not running.")
        if renewal:
            return
        if self.is_invite_only_at(now) and buyer_tier != self.invite_tier:
            raise InviteOnly(
                f"Until {self.invite_only_until.isoformat()} this drop is open to the {self.invite_tier!r} tier only.",
                invite_only_until=self.invite_only_until.isoformat(),
            )
        if self.shipping_countries and shipping_country not in self.shipping_countries:
            named = f"{shipping_country!r}" if shipping_country else "no country"
            raise CountryNotAllowed(
                f"This drop ships only to {', '.join(self.shipping_countries)}; the request named {named}.",
                shipping_countries=list(self.shipping_countries),
            )
        if quantity > self.per_buyer_limit:
            raise LimitExceeded(f"A buyer may reserve at most {self.per_buyer_limit} of this drop.")

    def check_new_tier(self, now: datetime, field: str = "invite_tier") -> None:
        """An admin may correct the tier of an invite-only phase that has not ended (or move its
        end: `field`): a misspelt one admits nobody and locks every buyer out until it ends. Holds
        already made stay."""
        if self.invite_only_until is None:
            raise InvalidDrop(field, "This drop has no invite-only phase; one is set with invite_only_until and "
                                     "invite_tier when the drop is scheduled.")
        if now >= self.invite_only_until:
            raise InvalidDrop(field, "The invite-only phase has ended; its tier no longer admits anyone.")

    def check_new_window(self, now: datetime, opens_at: datetime | None = None, closes_at: datetime | None = None,
                         invite_only_until: datetime | None = None) -> None:
        """An admin may move (each None: leaves it as it is):
        - the opening, until the drop opens: postponed for an incident, or a wrong offset put
          right, without a new drop (a new id, page and line). Once open, holds were made in the
          window as it was;
        - the close, to any time after the opening that is not already past;
        - the invite-only phase's end, while the phase lasts, to after the opening.
        The window they make together is checked whole: a drop postponed past its close, or past
        its invite-only phase's end, is refused, naming what to move too."""
        opening = opens_at or self.opens_at
        if opens_at is not None:
            if now >= self.opens_at - OPENING_FIXED_WITHIN:
                raise InvalidDrop("opens_at", "The drop has opened, or opens within seconds; its opening cannot move "
                                              "(its close can).")
            if opens_at < now:
                raise InvalidDrop("opens_at", "The new opening has already passed.")
        if closes_at is not None and closes_at < now:
            raise InvalidDrop("closes_at", "The new closing time has already passed.")
        if (closes_at or self.closes_at) <= opening:
            raise InvalidDrop("closes_at", "The drop must close after it opens." if closes_at else
                              "The drop would close before it opens: move closes_at too.")
        if invite_only_until is not None:
            self.check_new_tier(now, field="invite_only_until")
            if invite_only_until < now:
                raise InvalidDrop("invite_only_until", "The new end of the invite-only phase has already passed.")
        until = invite_only_until or self.invite_only_until
        if until is not None and until <= opening:
            raise InvalidDrop("invite_only_until", "The invite-only phase must end after the drop opens." if
                              invite_only_until else "The invite-only phase would end before the drop opens: move "
                                                     "invite_only_until too.")


def spread(units: int, rows: int) -> list[int]:
    """`units` over `rows` as evenly as possible, the first rows taking the remainder."""
    base, extra = divmod(units, rows)
    return [base + (1 if row < extra else 0) for row in range(rows)]


class StockShard(Base):
    """One slice of a drop's available stock: concurrent holds decrement different rows."""

    __tablename__ = "drop_stock_shards"
    __table_args__ = (
        sa.CheckConstraint("available >= 0", name="shard_available_not_negative"),
        sa.CheckConstraint("shard >= 0", name="shard_not_negative"),
    )

    drop_id: orm.Mapped[uuid.UUID] = orm.mapped_column(sa.ForeignKey("drops.id"), primary_key=True)
    shard: orm.Mapped[int] = orm.mapped_column(sa.SmallInteger, primary_key=True)
    available: orm.Mapped[int] = orm.mapped_column(sa.Integer)


class DropAnnouncement(Base):
    """An event about a drop already written to the outbox, so it is published once."""

    __tablename__ = "drop_announcements"

    drop_id: orm.Mapped[uuid.UUID] = orm.mapped_column(sa.ForeignKey("drops.id"), primary_key=True)
    event_type: orm.Mapped[str] = orm.mapped_column(sa.String(32), primary_key=True)
    announced_at: orm.Mapped[datetime] = orm.mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now())


class Reservation(Base):
    """Stock held for one order: `held` until paid (`sold`) or given back (`released`)."""

    __tablename__ = "reservations"
    __table_args__ = (
        sa.CheckConstraint("quantity > 0", name="quantity_positive"),
        sa.CheckConstraint(f"status IN ('{HELD}', '{SOLD}', '{RELEASED}')", name="known_status"),
        # What the expiry sweeper scans: only holds still waiting for payment.
        sa.Index("reservations_held_expiry", "hold_expires_at", postgresql_where=sa.text(f"status = '{HELD}'")),
    )

    order_id: orm.Mapped[uuid.UUID] = orm.mapped_column(pg.UUID(as_uuid=True), primary_key=True)
    drop_id: orm.Mapped[uuid.UUID] = orm.mapped_column(sa.ForeignKey("drops.id"), index=True)
    buyer_id: orm.Mapped[str] = orm.mapped_column(sa.String(128))
    quantity: orm.Mapped[int] = orm.mapped_column(sa.Integer)
    status: orm.Mapped[str] = orm.mapped_column(sa.String(16), default=HELD)
    hold_expires_at: orm.Mapped[datetime] = orm.mapped_column(sa.DateTime(timezone=True))
    # The newest version of the order (checkout's count of its status changes) this reservation
    # has acted on: an order event older than that is stale and changes nothing.
    order_version: orm.Mapped[int] = orm.mapped_column(sa.Integer, default=1, server_default="1")
    created_at: orm.Mapped[datetime] = orm.mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now())
    updated_at: orm.Mapped[datetime] = orm.mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now(), onupdate=sa.func.now()
    )

    drop: orm.Mapped[Drop] = orm.relationship(lazy="joined", innerjoin=True)

    @property
    def product(self) -> Product:
        return self.drop.product

    @property
    def unit_price(self) -> dict:
        return self.drop.product.price

    @property
    def invite_phase(self) -> bool:
        """Whether the hold was made during its drop's invite-only phase, so for a buyer of its
        tier (checkout lets such an order through without a line pass: the README's "The waiting
        room")."""
        return self.created_at is not None and self.drop.is_invite_only_at(self.created_at)


class BuyerAllowance(Base):
    """How many units of a drop a buyer holds or bought, so the per-buyer limit is one atomic upsert."""

    __tablename__ = "buyer_allowances"
    __table_args__ = (sa.CheckConstraint("taken >= 0", name="taken_not_negative"),)

    drop_id: orm.Mapped[uuid.UUID] = orm.mapped_column(sa.ForeignKey("drops.id"), primary_key=True)
    buyer_id: orm.Mapped[str] = orm.mapped_column(sa.String(128), primary_key=True)
    taken: orm.Mapped[int] = orm.mapped_column(sa.Integer)
