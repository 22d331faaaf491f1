"""Checkout's domain operations and event handlers."""
from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from services.checkout import errors, orders
from services.checkout.inventory_client import InventoryClient
from services.checkout.models import IdempotencyKey, Order, PaymentEvent
from services.checkout.payments import approval_url
from shared.logs import bind_order_id

log = logging.getLogger("floodgate.checkout")
ORDER_ID_NAMESPACE = uuid.UUID("6f1c6a52-3b1e-4a8e-9a55-8f4f8d0e7a10")


@dataclass(frozen=True)
class PlaceOrder:
    buyer_id: str
    buyer_email: str
    idempotency_key: str
    drop_id: str
    quantity: int
    shipping_address: dict

    @property
    def fingerprint(self) -> str:
        body = {"drop_id": self.drop_id, "quantity": self.quantity, "shipping_address": self.shipping_address}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    @property
    def order_id(self) -> uuid.UUID:
        # Derived from the key, so a retry after a crash asks inventory for the same hold.
        return uuid.uuid5(ORDER_ID_NAMESPACE, f"{self.buyer_id}:{self.idempotency_key}")


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: str

    @property
    def media_type(self) -> str:
        return "application/problem+json" if self.status >= 400 else "application/json"


def claim_idempotency_key(cmd: PlaceOrder, uow_factory: Callable, wait_seconds: float) -> StoredResponse | None:
    """Take the key for this request (None), or return the response it already produced.

    A concurrent duplicate waits for the first request's answer so both get the same one.
    """
    deadline = time.monotonic() + wait_seconds
    while True:
        with uow_factory() as uow:
            inserted = uow.session.execute(
                pg.insert(IdempotencyKey)
                .values(buyer_id=cmd.buyer_id, key=cmd.idempotency_key, fingerprint=cmd.fingerprint)
                .on_conflict_do_nothing()
                .returning(IdempotencyKey.key)
            ).first()
            uow.commit()
            if inserted:
                return None
            existing = uow.session.get(IdempotencyKey, (cmd.buyer_id, cmd.idempotency_key))
        if existing is None:
            continue  # released by a request that failed in between; take it
        if existing.fingerprint != cmd.fingerprint:
            raise errors.IdempotencyKeyReused("This Idempotency-Key was sent with a different request body.")
        if existing.response_status is not None:
            return StoredResponse(existing.response_status, existing.response_body)
        if time.monotonic() >= deadline:
            raise errors.RequestInProgress("The first request with this Idempotency-Key is still being handled.")
        time.sleep(0.05)


def remember_response(cmd: PlaceOrder, uow, status: int, body: dict) -> StoredResponse:
    """Store the answer for this key, in the caller's transaction."""
    stored = StoredResponse(status, json.dumps(body))
    uow.session.execute(
        sa.update(IdempotencyKey)
        .where(IdempotencyKey.buyer_id == cmd.buyer_id, IdempotencyKey.key == cmd.idempotency_key)
        .values(response_status=stored.status, response_body=stored.body)
    )
    return stored


def release_idempotency_key(cmd: PlaceOrder, uow) -> None:
    """Forget an unanswered key so the buyer's retry is handled afresh."""
    uow.session.execute(
        sa.delete(IdempotencyKey).where(
            IdempotencyKey.buyer_id == cmd.buyer_id,
            IdempotencyKey.key == cmd.idempotency_key,
            IdempotencyKey.response_status.is_(None),
        )
    )


def place_order(cmd: PlaceOrder, uow, inventory: InventoryClient, settings) -> Order:
    """Reserve the stock and record the order awaiting payment, with `order.placed` in the outbox."""
    order_id = cmd.order_id
    bind_order_id(str(order_id))
    hold = inventory.reserve(str(order_id), cmd.drop_id, cmd.buyer_id, cmd.quantity)
    existing = uow.session.get(Order, order_id)
    if existing is not None:
        return existing
    order = Order(
        id=order_id,
        buyer_id=cmd.buyer_id,
        buyer_email=cmd.buyer_email,
        drop_id=uuid.UUID(cmd.drop_id),
        sku=hold.sku,
        product_name=hold.product_name,
        quantity=hold.quantity,
        unit_amount=hold.unit_amount,
        currency=hold.currency,
        shipping_address=cmd.shipping_address,
        status=None,
        hold_expires_at=hold.hold_expires_at,
        approval_url=approval_url(
            settings.payment_provider_url,
            settings.payment_webhook_secret,
            str(order_id),
            hold.unit_amount * hold.quantity,
            hold.currency,
        ),
        history=[],
    )
    orders.move_new(order, "order placed; stock held")
    uow.session.add(order)
    uow.session.flush()
    publish_placed(order, uow, settings)
    return order


def order_document(order: Order, settings) -> dict:
    """The order as events carry it (see docs/contracts.md)."""
    return {
        "order_id": str(order.id),
        "buyer_id": order.buyer_id,
        "buyer_email": order.buyer_email,
        "drop_id": str(order.drop_id),
        "status": order.status,
        "quantity": order.quantity,
        "items": [
            {
                "sku": order.sku,
                "name": order.product_name,
                "quantity": order.quantity,
                "unit_price": {"amount": order.unit_amount, "currency": order.currency},
            }
        ],
        "total": {"amount": order.total_amount, "currency": order.currency},
        "shipping_address": order.shipping_address,
        "status_url": f"{settings.public_url.rstrip('/')}/orders/{order.id}",
    }


def publish_placed(order: Order, uow, settings) -> None:
    data = order_document(order, settings)
    data.update(hold_expires_at=order.hold_expires_at.isoformat(), payment_url=order.approval_url)
    uow.publish("order.placed", data)


@dataclass(frozen=True)
class PaymentNotice:
    """A provider webhook, already authenticated."""

    event_id: str
    event_type: str
    order_id: str
    capture_id: str
    amount: int
    currency: str


def apply_payment(notice: PaymentNotice, uow, settings) -> str:
    """Apply one provider event exactly once; returns what happened, for the response and logs."""
    bind_order_id(notice.order_id)
    first_time = uow.session.execute(
        pg.insert(PaymentEvent)
        .values(provider_event_id=notice.event_id, order_id=_uuid_or_none(notice.order_id), event_type=notice.event_type)
        .on_conflict_do_nothing()
        .returning(PaymentEvent.provider_event_id)
    ).first()
    if not first_time:
        return "duplicate"
    order_uuid = _uuid_or_none(notice.order_id)
    order = uow.session.get(Order, order_uuid, with_for_update=True) if order_uuid else None
    if order is None:
        raise errors.OrderNotFound("The payment names an order this shop does not know.")
    if notice.event_type != "PAYMENT.CAPTURE.COMPLETED":
        log.info("payment event recorded without effect", extra={"event_type": notice.event_type})
        return "ignored"
    if (notice.amount, notice.currency) != (order.total_amount, order.currency):
        log.error("payment amount differs from order total", extra={"paid": notice.amount, "due": order.total_amount})
        return "amount-mismatch"
    if order.status != orders.AWAITING_PAYMENT:
        log.warning("payment for an order that is no longer awaiting payment", extra={"status": order.status})
        return f"already-{order.status}"
    orders.move(order, orders.CONFIRMED, "payment captured")
    order.payment_capture_id = notice.capture_id
    order.confirmed_at = datetime.now(timezone.utc)
    data = order_document(order, settings)
    data["confirmed_at"] = order.confirmed_at.isoformat()
    uow.publish("order.confirmed", data)
    return "confirmed"


def on_reservation_expired(envelope, uow) -> None:
    """A hold ran out before payment: the order expires (its stock is already back on sale)."""
    order_uuid = _uuid_or_none(str(envelope.data.get("order_id", "")))
    order = uow.session.get(Order, order_uuid, with_for_update=True) if order_uuid else None
    if order is None or order.status != orders.AWAITING_PAYMENT:
        return
    bind_order_id(str(order.id))
    orders.move(order, orders.EXPIRED, "payment not received before the hold expired")
    uow.publish("order.expired", {
        "order_id": str(order.id),
        "drop_id": str(order.drop_id),
        "buyer_id": order.buyer_id,
        "buyer_email": order.buyer_email,
        "quantity": order.quantity,
    })


EVENT_HANDLERS = {"reservation.expired": on_reservation_expired}


def _uuid_or_none(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        return None
