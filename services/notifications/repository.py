"""The delivery log, and the unit of work that carries it."""
from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import orm

from shared import db
from services.notifications.models import Delivery


class DeliveryLog:
    """Deliveries in the service's database."""

    def __init__(self, session: orm.Session):
        self._session = session

    def for_event(self, event_id: str) -> Delivery | None:
        return self._session.scalar(sa.select(Delivery).where(Delivery.event_id == event_id))

    def add(self, delivery: Delivery) -> None:
        self._session.add(delivery)

    def search(
        self, order_id: str | None = None, to: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[Delivery]:
        """Newest first."""
        query = sa.select(Delivery).order_by(Delivery.sent_at.desc(), Delivery.id).limit(limit)
        if order_id is not None:
            query = query.where(Delivery.order_id == order_id)
        if to is not None:
            query = query.where(sa.func.lower(Delivery.to_address) == to.lower())
        if status is not None:
            query = query.where(Delivery.status == status)
        return list(self._session.scalars(query))


class UnitOfWork(db.UnitOfWork):
    """The shared unit of work, with the delivery log on its session."""

    deliveries: DeliveryLog

    def __enter__(self) -> "UnitOfWork":
        super().__enter__()
        self.deliveries = DeliveryLog(self.session)
        return self
