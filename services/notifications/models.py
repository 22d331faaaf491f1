"""Notifications' table: the delivery log, one row per event it was asked to mail."""
from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared import admin_actions

SENT, RETRYING, DEAD, SUPERSEDED = "sent", "retrying", "dead", "superseded"
STATUSES = (SENT, RETRYING, DEAD, SUPERSEDED)


class Base(DeclarativeBase):
    pass


# What admins did in this service (shared/admin_actions.py).
ADMIN_ACTIONS = admin_actions.define_table(Base.metadata)


class Delivery(Base):
    """The email of one event. `event_id` is unique, so an event is never mailed twice.

    `status` is `sent`, `retrying` (an attempt failed; the event waits in a delay queue), `dead`
    (parked in the dead-letter queue until an admin replays it) or `superseded` (not mailed: the
    email of a newer state of its order had gone out first; `order_version` is the order's
    version its event carried). `attempts`, `retries` and
    `dead_letters` only grow, across replays too: /metrics reads its totals from them.
    """

    __tablename__ = "deliveries"
    __table_args__ = (
        # who was mailed what, whatever the address's case (the admin API's search)
        sa.Index("deliveries_to_address", sa.text("lower(to_address)")),
        sa.Index("deliveries_status", "status", "updated_at"),
        # the oldest event still waiting for its email, for /metrics
        sa.Index("deliveries_pending_since", "occurred_at", postgresql_where=sa.text("status = 'retrying'")),
    )

    id: Mapped[uuid.UUID] = mapped_column(pg.UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    event_id: Mapped[str] = mapped_column(sa.String(128), unique=True)
    event_type: Mapped[str] = mapped_column(sa.String(100))
    order_id: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    order_version: Mapped[int | None] = mapped_column(sa.Integer)
    to_address: Mapped[str | None] = mapped_column(sa.String(320))
    subject: Mapped[str | None] = mapped_column(sa.String(300))
    status: Mapped[str] = mapped_column(sa.String(20))
    message_id: Mapped[str] = mapped_column(sa.String(200))
    attempts: Mapped[int] = mapped_column(sa.Integer, default=1, server_default="1")
    retries: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    dead_letters: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    occurred_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now())
    sent_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), index=True)
    handled_by: Mapped[str | None] = mapped_column(sa.String(200))


class PurgedDeliveryTotals(Base):
    """What the deliveries the consumer purged (DeliveryLog.purge_finished) counted towards
    /metrics' totals: one row, added to as they go, so the counters never go back."""

    __tablename__ = "delivery_totals_purged"
    __table_args__ = (sa.CheckConstraint("id = 1", name="one_row"),)

    id: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True, autoincrement=False)
    sent: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    retries: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    dead_letters: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")


class OrderEmailVersion(Base):
    """The newest version of an order whose email was accepted (or is being sent, by a transaction
    not yet committed, which holds this row). An email of an older version of the order is then
    `superseded`: see services/notifications/handlers.py."""

    __tablename__ = "order_email_versions"

    order_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    newest_version: Mapped[int] = mapped_column(sa.Integer)
