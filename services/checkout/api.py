"""Checkout's HTTP endpoints: thin views over `handlers`."""
from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from flask import Blueprint, current_app, jsonify, request

from services.checkout import handlers
from services.checkout.errors import InvalidSignature, OrderNotFound
from services.checkout.inventory_client import InventoryClient
from services.checkout.models import Order
from services.checkout.payments import SIGNATURE_HEADER, PaymentProvider, signature_is_valid
from services.checkout.schemas import (
    ListQuerySchema,
    OrderListSchema,
    OrderRequestSchema,
    OrderSchema,
    WebhookAnswerSchema,
    WebhookSchema,
)
from shared import addresses
from shared.addresses import InvalidAddress, normalise
from shared.auth import current_principal, require_admin, require_user
from shared.errors import InvalidRequest, Problem
from shared.openapi import operation
from shared.web import context, load, unit_of_work

bp = Blueprint("checkout", __name__)
# Built once: instantiating a schema deep-copies its fields, which cost more than using it.
ORDER_REQUEST = OrderRequestSchema()
ORDER = OrderSchema()
WEBHOOK = WebhookSchema()
IDEMPOTENCY_KEY_MAX_LENGTH = 255


@dataclass(frozen=True)
class Wiring:
    inventory: InventoryClient
    provider: PaymentProvider


def _wiring() -> Wiring:
    return current_app.extensions["checkout"]


@bp.post("/orders")
@require_user
@operation(
    "Place an order: hold stock for the buyer and get the payment link",
    request=OrderRequestSchema,
    response=OrderSchema,
    status=201,
    errors=(403, 404, 409, 429, 503),
    auth="bearer",
    rules=(addresses.RULE, "the drop ships to the address's country (`country-not-allowed`)",
           "an `Idempotency-Key` already sent with another body is not sent again (`idempotency-key-reused`)"),
    headers={"Idempotency-Key": {
        "description": "Unique per purchase intent: a retry with the same key and body gets the same answer "
                       "(header `Idempotent-Replayed: true`); the same key with another body answers 422.",
        "schema": {"type": "string", "minLength": 1, "maxLength": IDEMPOTENCY_KEY_MAX_LENGTH},
    }},
)
def place_order():
    key = request.headers.get("Idempotency-Key", "").strip()
    if not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX_LENGTH:
        raise InvalidRequest(
            f"Send an Idempotency-Key header (1 to {IDEMPOTENCY_KEY_MAX_LENGTH} characters) with every order.",
            errors={"Idempotency-Key": ["Missing or too long."]},
        )
    body = load(ORDER_REQUEST)
    try:
        address = normalise(body["shipping_address"])
    except InvalidAddress as invalid:
        raise InvalidAddress({"shipping_address": invalid.errors}) from None
    principal = current_principal()
    cmd = handlers.PlaceOrder(
        buyer_id=principal.subject,
        buyer_email=principal.email or "",
        idempotency_key=key,
        drop_id=str(body["drop_id"]),
        quantity=body["quantity"],
        shipping_address=address,
        buyer_tier=principal.tier,
    )
    return _place(cmd, _wiring())


def _place(cmd: handlers.PlaceOrder, wiring: Wiring):
    with unit_of_work() as uow:
        stored = handlers.claim_idempotency_key(cmd, uow)
        if stored is not None:
            response = _send(stored)
            response.headers["Idempotent-Replayed"] = "true"
            return response
        try:
            order = handlers.place_order(cmd, uow, wiring.inventory, wiring.provider, context().settings)
        except Problem as problem:
            if problem.status >= 500 or problem.status == 429:
                raise  # leaving the block rolls the claim back: the buyer's retry starts afresh
            # A definitive refusal (sold out, not open, ...) is this key's answer from now on.
            stored = handlers.remember_response(cmd, uow, problem.status, dict(problem.to_dict(), instance=request.path))
            uow.commit()
            return _send(stored)
        stored = handlers.remember_response(cmd, uow, 201, ORDER.dump(order))
        uow.commit()
    response = _send(stored)
    response.headers["Location"] = f"/orders/{order.id}"
    return response


def _send(stored: handlers.StoredResponse):
    return current_app.response_class(stored.body, status=stored.status, mimetype=stored.media_type)


@bp.get("/orders/<order_id>")
@require_user
@operation("One order, for its buyer or an admin", response=OrderSchema, errors=(404,), auth="bearer")
def get_order(order_id: str):
    with unit_of_work() as uow:
        order = _visible_order(uow, order_id)
    return jsonify(ORDER.dump(order))


@bp.get("/orders")
@require_user
@operation("The buyer's own orders, newest first", query=ListQuerySchema, response=OrderListSchema, auth="bearer")
def list_orders():
    query = ListQuerySchema().load(request.args)
    principal = current_principal()
    with unit_of_work() as uow:
        rows = uow.session.scalars(
            sa.select(Order)
            .where(Order.buyer_id == principal.subject)
            .order_by(Order.created_at.desc(), Order.id)
            .limit(query["limit"] + 1)
            .offset(query["offset"])
        ).all()
    more = len(rows) > query["limit"]
    return jsonify(
        OrderListSchema().dump(
            {"orders": rows[: query["limit"]], "next_offset": query["offset"] + query["limit"] if more else None}
        )
    )


@bp.post("/orders/<order_id>/cancel")
@require_user
@operation("Cancel an order before it ships: stock released, payment refunded", response=OrderSchema,
           errors=(404, 409), auth="bearer")
def cancel_order(order_id: str):
    with unit_of_work() as uow:
        order = _visible_order(uow, order_id, lock=True)
        handlers.cancel_order(order, uow, context().settings, by_admin=current_principal().is_admin)
        uow.commit()
    return jsonify(ORDER.dump(order))


@bp.post("/orders/<order_id>/ship")
@require_admin
@operation("Mark a confirmed order shipped (admin)", response=OrderSchema, errors=(404, 409), auth="admin")
def ship_order(order_id: str):
    with unit_of_work() as uow:
        order = _visible_order(uow, order_id, lock=True)
        handlers.ship_order(order, uow, context().settings)
        uow.commit()
    return jsonify(ORDER.dump(order))


def _visible_order(uow, order_id: str, lock: bool = False) -> Order:
    order = handlers.find_order(uow, order_id, lock=lock)
    principal = current_principal()
    if order is None or (order.buyer_id != principal.subject and not principal.is_admin):
        raise OrderNotFound(f"There is no order {order_id} for you.")
    return order


@bp.post("/payments/webhook")
@operation(
    "Payment provider callback (signed)",
    request=WebhookSchema,
    response=WebhookAnswerSchema,
    errors=(401, 404),
    headers={SIGNATURE_HEADER: {"description": "t=<unix seconds>,v1=<hex HMAC-SHA256 of '<t>.<body>'>; "
                                               "missing, wrong or stale answers 401"}},
)
def payment_webhook():
    settings = context().settings
    payload = request.get_data(cache=True)
    if not signature_is_valid(
        settings.payment_webhook_secret,
        payload,
        request.headers.get(SIGNATURE_HEADER, ""),
        settings.webhook_tolerance_seconds,
    ):
        raise InvalidSignature("The webhook signature is missing, wrong or outside the time tolerance.")
    event = load(WEBHOOK)
    resource = event["resource"]
    notice = handlers.PaymentNotice(
        event_id=event["id"],
        event_type=event["event_type"],
        order_id=resource["order_id"],
        capture_id=resource["id"],
        amount=resource["amount"],
        currency=resource["currency"],
    )
    with unit_of_work() as uow:
        result = handlers.apply_payment(notice, uow, _wiring().inventory, settings)
        uow.commit()
    return jsonify(WebhookAnswerSchema().dump({"result": result}))
