"""Checkout's tables: orders and their history, idempotency keys, applied payment events."""
from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from shared import admin_actions


class Base(DeclarativeBase):
    pass


# What admins did in this service (shared/admin_actions.py).
ADMIN_ACTIONS = admin_actions.define_table(Base.metadata)


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
    # what the provider said it gave back of each of this order's captures (refunds, checkout's
    # own included, and reversals), capture id -> amount, parts added up: the order's own payment
    # given back whole ends it, what checkout still refunds is what is left, and a capture given
    # back before its completion arrived (webhooks come in any order) never confirms the order
    captures_given_back: Mapped[dict] = mapped_column(pg.JSONB, server_default="{}")
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


CAPTURE_COMPLETED = "PAYMENT.CAPTURE.COMPLETED"  # the provider's event of a payment taken


class PaymentEvent(Base):
    """Each provider event is applied once: its id is recorded with the effect."""

    __tablename__ = "payment_events"
    __table_args__ = (
        # whether an order was ever charged (the email of its end says so)
        sa.Index("payment_events_captures", "order_id",
                 postgresql_where=sa.text(f"event_type = '{CAPTURE_COMPLETED}'")),
    )

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


class Line(Base):
    """A drop's waiting room (services/checkout/line.py): its configuration, its verifiable seed,
    and the counters the admitter keeps."""

    __tablename__ = "lines"

    drop_id: Mapped[uuid.UUID] = mapped_column(pg.UUID(as_uuid=True), primary_key=True)
    opens_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    # "pre_queue" until the opening, then "open", "paused" or "closed"
    state: Mapped[str] = mapped_column(sa.String(16), server_default="pre_queue")
    seed: Mapped[bytes] = mapped_column(sa.LargeBinary)  # secret until the opening
    commitment: Mapped[str] = mapped_column(sa.String(64))  # sha256(seed), public from the start
    opened_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    # tickets taken, as the admitter last counted them; positions handed out so far (the first
    # `pre_queue_size` by the seed, from the opening on, a chunk a turn; the rest in arrival order)
    joined: Mapped[int] = mapped_column(server_default="0")
    placed: Mapped[int] = mapped_column(server_default="0")
    pre_queue_size: Mapped[int] = mapped_column(server_default="0")
    # the pre-queue's last arrival number, fixed at the opening: the tickets up to it are the
    # pre-queue's (NULL for a line opened before positions were written in turns)
    pre_queue_last_arrival: Mapped[int | None]
    admitted_through: Mapped[int] = mapped_column(server_default="0")  # the last position admitted
    admission_factor: Mapped[float] = mapped_column(sa.Float, server_default="1.0")
    admission_rate: Mapped[float] = mapped_column(sa.Float, server_default="20.0")  # the admin's ceiling, per second
    pass_ttl_seconds: Mapped[int] = mapped_column(server_default="120")
    # accounts created after this instant may not join (against freshly made bot accounts)
    accounts_created_before: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    remaining_units: Mapped[int | None]  # the drop's units, as the admitter last saw them
    observed_rate: Mapped[float] = mapped_column(sa.Float, server_default="0")  # admissions per second, recent
    # the admitter's pace, one per line whichever replica turns it (services/checkout/admitter.py):
    # the rate it admits at now (0 until the line's first open turn), the admissions it may still
    # make, and when a turn last refilled them
    pace_rate: Mapped[float] = mapped_column(sa.Float, server_default="0")
    pace_budget: Mapped[float] = mapped_column(sa.Float, server_default="0")
    paced_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now())
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now())


class LineTicket(Base):
    """One account's place in one drop's line."""

    __tablename__ = "line_tickets"
    __table_args__ = (
        sa.UniqueConstraint("drop_id", "buyer_id", name="line_tickets_one_per_account"),
        sa.UniqueConstraint("drop_id", "arrival", name="line_tickets_arrival"),
        sa.UniqueConstraint("drop_id", "position", name="line_tickets_position"),
        # the admitter places newcomers in arrival order
        sa.Index("line_tickets_unplaced", "drop_id", "arrival", postgresql_where=sa.text("position IS NULL")),
        # the admitter takes the next positions not yet admitted
        sa.Index("line_tickets_waiting", "drop_id", "position", postgresql_where=sa.text("admitted_at IS NULL")),
        # active passes: admitted, unused, not yet expired (only admitted tickets are in it)
        sa.Index("line_tickets_active", "drop_id", "pass_expires_at",
                 postgresql_where=sa.text("used_at IS NULL AND pass_expires_at IS NOT NULL")),
    )

    id: Mapped[uuid.UUID] = mapped_column(pg.UUID(as_uuid=True), primary_key=True)
    drop_id: Mapped[uuid.UUID] = mapped_column(pg.UUID(as_uuid=True))
    buyer_id: Mapped[str] = mapped_column(sa.String(64))
    # from the sequence line_arrivals: orders the arrivals after the opening (gaps mean nothing)
    arrival: Mapped[int]
    # set by the admitter: for the pre-queue LINE_POSITIONS_PER_TURN a turn from the opening on,
    # for later arrivals as many a turn once the pre-queue is placed
    position: Mapped[int | None]
    joined_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now())
    admitted_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    pass_expires_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))


class CheckoutLoad(Base):
    """Each checkout API process's refusals (429) so far, written every few seconds
    (load_shedding.LoadReport): the waiting room's admitter slows down while they grow."""

    __tablename__ = "checkout_load"

    process: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    refused: Mapped[int] = mapped_column(sa.BigInteger)
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
