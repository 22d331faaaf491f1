"""Checkout's HTTP endpoints: thin views over `handlers` (and `idempotency` for placing orders)."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from services.checkout import handlers, idempotency
from services.checkout.errors import InvalidSignature, OrderNotFound
from services.checkout.models import Order
from services.checkout.payments import SIGNATURE_HEADER, signature_is_valid
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
from shared.errors import InvalidRequest
from shared.openapi import operation
from shared.web import load, root, unit_of_work

bp = Blueprint("checkout", __name__)
# Built once: instantiating a schema deep-copies its fields, which cost more than using it.
ORDER_REQUEST = OrderRequestSchema()
ORDER = OrderSchema()
WEBHOOK = WebhookSchema()
IDEMPOTENCY_KEY_MAX_LENGTH = 255


@bp.post("/orders")
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
@require_user
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
    checkout = root()
    with unit_of_work() as uow:
        answer = idempotency.place_once(cmd, uow, checkout.inventory, checkout.provider, checkout.settings,
                                        render=ORDER.dump, instance=request.path)
    response = current_app.response_class(answer.body, status=answer.status, mimetype=answer.media_type)
    response.headers.update(answer.headers)
    return response


@bp.get("/orders/<order_id>")
@operation("One order, for its buyer or an admin", response=OrderSchema, errors=(404,), auth="bearer")
@require_user
def get_order(order_id: str):
    with unit_of_work() as uow:
        order = _visible_order(uow, order_id)
    return jsonify(ORDER.dump(order))


@bp.get("/orders")
@operation("The buyer's own orders, newest first", query=ListQuerySchema, response=OrderListSchema, auth="bearer")
@require_user
def list_orders():
    query = ListQuerySchema().load(request.args)
    principal = current_principal()
    with unit_of_work() as uow:
        page = handlers.orders_page(uow, principal.subject, query["limit"], query["offset"])
    return jsonify(OrderListSchema().dump(page))


@bp.post("/orders/<order_id>/cancel")
@operation("Cancel an order before it ships: stock released, payment refunded", response=OrderSchema,
           errors=(404, 409), auth="bearer")
@require_user
def cancel_order(order_id: str):
    with unit_of_work() as uow:
        order = _visible_order(uow, order_id, lock=True)
        handlers.cancel_order(order, uow, root().settings, by_admin=current_principal().is_admin)
        uow.commit()
    return jsonify(ORDER.dump(order))


@bp.post("/orders/<order_id>/ship")
@operation("Mark a confirmed order shipped (admin)", response=OrderSchema, errors=(404, 409), auth="admin")
@require_admin
def ship_order(order_id: str):
    with unit_of_work() as uow:
        order = _visible_order(uow, order_id, lock=True)
        handlers.ship_order(order, uow, root().settings)
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
    settings = root().settings
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
        result = handlers.apply_payment(notice, uow, root().inventory, settings)
        uow.commit()
    return jsonify(WebhookAnswerSchema().dump({"result": result}))
