"""Notifications' table: the delivery log, one row per event whose email was sent."""
from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Delivery(Base):
    """An email sent for an event. `event_id` is unique, so an event never sends twice."""

    __tablename__ = "deliveries"

    id: Mapped[uuid.UUID] = mapped_column(pg.UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    event_id: Mapped[str] = mapped_column(sa.String(128), unique=True)
    event_type: Mapped[str] = mapped_column(sa.String(100))
    order_id: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    to_address: Mapped[str] = mapped_column(sa.String(320))
    subject: Mapped[str] = mapped_column(sa.String(300))
    status: Mapped[str] = mapped_column(sa.String(20))
    message_id: Mapped[str] = mapped_column(sa.String(200))
    sent_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), index=True)
