"""The order state machine: which status may follow which."""
from __future__ import annotations

from services.checkout.errors import InvalidTransition
from services.checkout.models import Order, OrderTransition

AWAITING_PAYMENT = "awaiting_payment"
CONFIRMED = "confirmed"
SHIPPED = "shipped"
EXPIRED = "expired"
PAYMENT_FAILED = "payment_failed"
CANCELLED = "cancelled"

ALLOWED = {
    AWAITING_PAYMENT: {CONFIRMED, EXPIRED, PAYMENT_FAILED, CANCELLED},
    CONFIRMED: {SHIPPED, CANCELLED},
    # A payment that completes late is kept only if its stock could be held again; cancelling
    # first says none may (one that comes anyway is refunded).
    EXPIRED: {CONFIRMED, CANCELLED},
    PAYMENT_FAILED: {CONFIRMED, CANCELLED},
}


def can_move(from_status: str | None, to_status: str) -> bool:
    return to_status in ALLOWED.get(from_status, set())


def move(order: Order, to_status: str, reason: str) -> None:
    """Change `order`'s status and record the step in its history, or raise InvalidTransition."""
    if not can_move(order.status, to_status):
        raise InvalidTransition(f"An order that is {order.status} cannot become {to_status}.")
    order.history.append(OrderTransition(from_status=order.status, to_status=to_status, reason=reason))
    order.status = to_status


def version(order: Order) -> int:
    """How many status changes the order has been through: every order event carries it, so
    inventory can tell a stale (retried or delayed) event from the newest state."""
    return len(order.history)


def move_new(order: Order, reason: str) -> None:
    """Start a new order's life in `awaiting_payment`."""
    order.history.append(OrderTransition(from_status=None, to_status=AWAITING_PAYMENT, reason=reason))
    order.status = AWAITING_PAYMENT


def items(order: Order) -> list[dict]:
    """What the order is for, as the API and the events show it: one drop, one line."""
    return [{
        "sku": order.sku,
        "name": order.product_name,
        "quantity": order.quantity,
        "unit_price": {"amount": order.unit_amount, "currency": order.currency},
    }]


def total(order: Order) -> dict:
    return {"amount": order.total_amount, "currency": order.currency}
