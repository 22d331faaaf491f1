"""Checkout's tables: orders and their history, idempotency keys, applied payment events."""
from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    # a buyer's orders, newest first (GET /orders)
    __table_args__ = (sa.Index("orders_buyer_newest", "buyer_id", sa.text("created_at DESC")),)

    id: Mapped[uuid.UUID] = mapped_column(pg.UUID(as_uuid=True), primary_key=True)
    buyer_id: Mapped[str] = mapped_column(sa.String(64), index=True)
    buyer_email: Mapped[str] = mapped_column(sa.String(320))
    drop_id: Mapped[uuid.UUID] = mapped_column(pg.UUID(as_uuid=True), index=True)
    sku: Mapped[str] = mapped_column(sa.String(64))
    product_name: Mapped[str] = mapped_column(sa.String(200))
    quantity: Mapped[int]
    unit_amount: Mapped[int]
    currency: Mapped[str] = mapped_column(sa.String(3))
    shipping_address: Mapped[dict] = mapped_column(pg.JSONB)
    status: Mapped[str] = mapped_column(sa.String(32))
    hold_expires_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    approval_url: Mapped[str] = mapped_column(sa.String(1000))
    payment_capture_id: Mapped[str | None] = mapped_column(sa.String(128))
    address_key: Mapped[str | None] = mapped_column(sa.String(64))
    refund_id: Mapped[str | None] = mapped_column(sa.String(128))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now())
    confirmed_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    cancelled_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    shipped_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    refunded_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    email_sent_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    history: Mapped[list["OrderTransition"]] = relationship(
        order_by="OrderTransition.id", lazy="selectin", cascade="all, delete-orphan"
    )

    @property
    def total_amount(self) -> int:
        return self.unit_amount * self.quantity


class OrderTransition(Base):
    __tablename__ = "order_transitions"

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    order_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("orders.id"), index=True)
    from_status: Mapped[str | None] = mapped_column(sa.String(32))
    to_status: Mapped[str] = mapped_column(sa.String(32))
    reason: Mapped[str] = mapped_column(sa.String(200))
    at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now())


class IdempotencyKey(Base):
    """A buyer's `Idempotency-Key`, the fingerprint of its request and, once done, the response."""

    __tablename__ = "idempotency_keys"

    buyer_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(sa.String(64))
    response_status: Mapped[int | None]
    # kept as text so a replay returns the very bytes of the first answer
    response_body: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now())


class PaymentEvent(Base):
    """Each provider event is applied once: its id is recorded with the effect."""

    __tablename__ = "payment_events"

    provider_event_id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    order_id: Mapped[uuid.UUID | None] = mapped_column(pg.UUID(as_uuid=True))
    event_type: Mapped[str] = mapped_column(sa.String(64))
    received_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now())


class AddressAllowance(Base):
    """Units ordered per drop for one shipping address, across buyers (resellers share addresses)."""

    __tablename__ = "address_allowances"

    drop_id: Mapped[uuid.UUID] = mapped_column(pg.UUID(as_uuid=True), primary_key=True)
    address_key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    taken: Mapped[int]
