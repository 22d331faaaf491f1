"""The order events the inventory consumes: a confirmed order's hold becomes a sale, an order
that ends gives its units back. Each handler runs as `handler(envelope, uow)` inside the
consumer's unit of work and reaches the database through its repositories only."""
from __future__ import annotations

import logging
import uuid

from services.inventory.errors import LimitExceeded, SaleNotOpen, SoldOut
from services.inventory.handlers.reservations import note_order_version
from services.inventory.models import HELD, RELEASED, SOLD, Reservation
from shared.logs import bind_order_id
from shared.messaging.consumer import PermanentFailure

log = logging.getLogger("floodgate.inventory")


def _order_id_of(envelope) -> uuid.UUID:
    try:
        order_id = uuid.UUID(str(envelope.data["order_id"]))
    except (KeyError, ValueError):
        raise PermanentFailure(f"{envelope.type} without a valid order_id") from None
    bind_order_id(order_id)
    return order_id


def _is_version(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _accept_order_event(envelope, reservation: Reservation) -> bool:
    """False for an order event older than what the reservation already acted on: a retried or
    delayed delivery (a late payment re-held the unit after `order.expired` was sent, say, or a
    retried `order.confirmed` after `order.cancelled`). Applying it would undo the newer state, so
    it is dropped. An equal version is applied again, harmlessly, and events without a version
    (from a checkout older than versioning) are applied as they come. The handler notes the
    event's version (`_version_of`) once it has acted."""
    version = _version_of(envelope)
    if version is None or version >= reservation.order_version:
        return True
    log.warning("stale order event ignored", extra={
        "event_type": envelope.type, "event_version": version, "order_version": reservation.order_version})
    return False


def _version_of(envelope) -> int | None:
    version = envelope.data.get("version")
    return version if _is_version(version) else None


def on_order_confirmed(envelope, uow) -> None:
    order_id = _order_id_of(envelope)
    version = _version_of(envelope)
    if version is not None and uow.reservations.sold_at(order_id, version):
        # checkout made the sale as it confirmed the payment (POST /reservations/{id}/sell), at
        # this version of the order or a newer one: nothing is left to do, and nothing is locked
        return
    reservation = uow.reservations.for_update(order_id)
    if reservation is None:
        raise PermanentFailure("a confirmed order has no reservation")
    if not _accept_order_event(envelope, reservation):
        return
    if reservation.status == HELD:
        reservation.status = SOLD
    elif reservation.status == RELEASED:
        _sell_again(reservation, uow)  # before the version is noted: Stock.take_again says why
    note_order_version(reservation, version)


def _sell_again(reservation: Reservation, uow) -> None:
    """A confirmation that reached us after the hold was given back (the consumer was down past
    the grace period): take the units again if the drop still has them, else say the order lost
    them, so checkout cancels and refunds it. Never an oversell, never money kept without goods."""
    try:
        uow.stock.take_again(reservation)
        reservation.status = SOLD
        log.warning("released hold sold again after a late confirmation", extra={"drop_id": str(reservation.drop_id)})
    except (SoldOut, SaleNotOpen, LimitExceeded) as refusal:
        log.error("a confirmed order lost its units", extra={"drop_id": str(reservation.drop_id), "reason": refusal.slug})
        uow.publish("reservation.lost", {"order_id": str(reservation.order_id), "drop_id": str(reservation.drop_id),
                                         "quantity": reservation.quantity, "reason": refusal.slug})


def on_order_ended(envelope, uow) -> None:
    """A cancelled or expired order gives its stock back, whether it was held or already sold."""
    order_id = _order_id_of(envelope)
    reservation = uow.reservations.for_update(order_id)
    if reservation is None:
        log.warning("no reservation to release", extra={"event_type": envelope.type})
        return
    if not _accept_order_event(envelope, reservation):
        return
    note_order_version(reservation, _version_of(envelope))  # give_back writes it after the allowances
    if reservation.status != RELEASED:
        uow.stock.give_back([reservation])


EVENT_HANDLERS = {
    "order.confirmed": on_order_confirmed,
    "order.cancelled": on_order_ended,
    "order.expired": on_order_ended,
    "order.payment_failed": on_order_ended,
}
