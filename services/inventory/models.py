"""Products, drops (a sale window over a fixed stock), reservations and buyer allowances.

A drop's state is computed from the clock and its stock whenever it is asked for, never stored,
so nothing has to flip it at `opens_at` or `closes_at`.
"""
from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.dialects import postgresql as pg

from services.inventory.errors import InvalidDrop, LimitExceeded, SaleNotOpen

HELD, SOLD, RELEASED = "held", "sold", "released"
SCHEDULED, OPEN, SOLD_OUT, CLOSED = "scheduled", "open", "sold_out", "closed"


class Base(orm.DeclarativeBase):
    pass


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
        # The upper bound turns a double release into a failed transaction instead of extra stock.
        sa.CheckConstraint("available >= 0 AND available <= quantity", name="available_within_stock"),
        sa.CheckConstraint("closes_at > opens_at", name="closes_after_opening"),
        sa.CheckConstraint("per_buyer_limit > 0", name="per_buyer_limit_positive"),
    )

    id: orm.Mapped[uuid.UUID] = orm.mapped_column(pg.UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    product_id: orm.Mapped[uuid.UUID] = orm.mapped_column(sa.ForeignKey("products.id"), index=True)
    quantity: orm.Mapped[int] = orm.mapped_column(sa.Integer)
    available: orm.Mapped[int] = orm.mapped_column(sa.Integer)
    opens_at: orm.Mapped[datetime] = orm.mapped_column(sa.DateTime(timezone=True))
    closes_at: orm.Mapped[datetime] = orm.mapped_column(sa.DateTime(timezone=True))
    per_buyer_limit: orm.Mapped[int] = orm.mapped_column(sa.Integer, default=1)
    created_at: orm.Mapped[datetime] = orm.mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now())

    product: orm.Mapped[Product] = orm.relationship(lazy="joined", innerjoin=True)

    @classmethod
    def schedule(
        cls, product: Product, quantity: int, opens_at: datetime, closes_at: datetime, per_buyer_limit: int, now: datetime
    ) -> "Drop":
        """A new drop of `quantity` units of `product`, refusing a window that is empty or already over."""
        if closes_at <= opens_at:
            raise InvalidDrop("closes_at", "The drop must close after it opens.")
        if closes_at <= now:
            raise InvalidDrop("closes_at", "The drop would already be closed.")
        return cls(
            id=uuid.uuid4(),
            product=product,
            quantity=quantity,
            available=quantity,
            opens_at=opens_at,
            closes_at=closes_at,
            per_buyer_limit=per_buyer_limit,
        )

    def is_open_at(self, now: datetime) -> bool:
        return self.opens_at <= now < self.closes_at

    def state_at(self, now: datetime) -> str:
        if now < self.opens_at:
            return SCHEDULED
        if now >= self.closes_at:
            return CLOSED
        return SOLD_OUT if self.available <= 0 else OPEN

    def check_reservable(self, quantity: int, now: datetime) -> None:
        """Refuse what no amount of stock could satisfy: a closed window or more than one buyer may take."""
        if now < self.opens_at:
            raise SaleNotOpen("The drop has not opened yet.", opens_at=self.opens_at.isoformat())
        if now >= self.closes_at:
            raise SaleNotOpen("The drop has closed.", closes_at=self.closes_at.isoformat())
        if quantity > self.per_buyer_limit:
            raise LimitExceeded(f"A buyer may reserve at most {self.per_buyer_limit} of this drop.")


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


class BuyerAllowance(Base):
    """How many units of a drop a buyer holds or bought, so the per-buyer limit is one atomic upsert."""

    __tablename__ = "buyer_allowances"
    __table_args__ = (sa.CheckConstraint("taken >= 0", name="taken_not_negative"),)

    drop_id: orm.Mapped[uuid.UUID] = orm.mapped_column(sa.ForeignKey("drops.id"), primary_key=True)
    buyer_id: orm.Mapped[str] = orm.mapped_column(sa.String(128), primary_key=True)
    taken: orm.Mapped[int] = orm.mapped_column(sa.Integer)
