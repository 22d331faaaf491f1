"""Checkout's HTTP endpoints: thin views over `handlers` (and `idempotency` for placing orders)."""
from __future__ import annotations

import socket

from flask import Blueprint, current_app, jsonify, request

from services.checkout import figures, handlers, idempotency, line as waiting_room
from services.checkout.errors import (DropNotFound, InvalidSignature, LineBeingPlaced, LineNotFound, OrderNotFound,
                                     TicketNotFound)
from services.checkout.models import Order
from services.checkout.payments import CAPTURE_UNDONE, SIGNATURE_HEADER, signature_is_valid
from services.checkout.schemas import (
    AdmissionOrderQuerySchema,
    AdmissionOrderSchema,
    DropFiguresSchema,
    LineChangeSchema,
    LineRequestSchema,
    LineSchema,
    ListQuerySchema,
    OrderListSchema,
    OrderRequestSchema,
    OrderSchema,
    TicketSchema,
    WebhookAnswerSchema,
    WebhookSchema,
)
from shared import addresses
from shared.addresses import InvalidAddress, normalise
from shared.answer_cache import AnswerCache
from shared.auth import current_principal, require_admin, require_user
from shared.control_room import requested_action
from shared.errors import InvalidRequest
from shared.openapi import operation
from shared.values import utc_now, uuid_or_none
from shared.web import load, public_answer, root, unit_of_work

bp = Blueprint("checkout", __name__)
# Built once: instantiating a schema deep-copies its fields, which cost more than using it.
ORDER_REQUEST = OrderRequestSchema()
ORDER = OrderSchema()
ORDER_LIST = OrderListSchema()  # its nested OrderSchema too: built once with it
LIST_QUERY = ListQuerySchema()
WEBHOOK = WebhookSchema()
WEBHOOK_ANSWER = WebhookAnswerSchema()
IDEMPOTENCY_KEY_MAX_LENGTH = 255
LINE = LineSchema()
TICKET = TicketSchema()
LINE_PASS_HEADER = "Line-Pass"
LINE_VIEWS = "checkout.line_views"


def init_app(app, settings) -> None:
    """The worker's copy of the lines' public answers (`GET /drops/{id}/line`)."""
    app.extensions[LINE_VIEWS] = AnswerCache(settings.line_max_age_seconds)


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
    description="On a drop with a line (the waiting room) the order needs the admission pass the line gave "
                "the buyer, in the header `Line-Pass`: without it 403 `line-pass-required`; forged, another "
                "buyer's or another drop's 403 `line-pass-invalid`; expired 403 `line-pass-expired`; already "
                "used 409 `line-pass-used`. Nothing stays held then, and the refusal is not kept as the key's answer. "
                "During the drop's invite-only phase, when the line admits nobody, a buyer of the invited tier "
                "orders without a pass.",
    headers={"Idempotency-Key": {
        "description": "Unique per purchase intent: a retry with the same key and body gets the same answer "
                       "(header `Idempotent-Replayed: true`); the same key with another body answers 422, naming "
                       "the order the key placed (`order_id`, `order`) if it placed one. A refusal is kept as the "
                       "key's answer for two days (`REFUSED_KEY_RETENTION_SECONDS`): after that the key is new.",
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
        line_pass=request.headers.get(LINE_PASS_HEADER) or None,
    )
    checkout = root()
    with unit_of_work() as uow:
        answer = idempotency.place_once(cmd, uow, checkout.inventory, checkout.provider, checkout.settings,
                                        render=ORDER.dump, instance=request.path,
                                        drops_with_lines=checkout.drops_with_lines)
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
    query = LIST_QUERY.load(request.args)
    principal = current_principal()
    with unit_of_work() as uow:
        page = handlers.orders_page(uow, principal.subject, query["limit"], query["offset"])
    return jsonify(ORDER_LIST.dump(page))


@bp.post("/orders/<order_id>/cancel")
@operation("Cancel an order before it ships: stock released, payment refunded", response=OrderSchema,
           errors=(404, 409), auth="bearer")
@require_user
def cancel_order(order_id: str):
    principal = current_principal()
    with unit_of_work() as uow:
        order = _visible_order(uow, order_id, lock=True)
        was = order.status
        by_admin = principal.is_admin and order.buyer_id != principal.subject
        if handlers.cancel_order(order, uow, root().settings, by_admin=by_admin) and by_admin:
            _record_order_change(uow, order, was=was)  # an admin refunding a buyer says who did it
        uow.commit()
    return jsonify(ORDER.dump(order))


@bp.post("/orders/<order_id>/ship")
@operation("Mark a confirmed order shipped (admin)", response=OrderSchema, errors=(404, 409), auth="admin")
@require_admin
def ship_order(order_id: str):
    with unit_of_work() as uow:
        order = _visible_order(uow, order_id, lock=True)
        handlers.ship_order(order, uow, root().settings)
        _record_order_change(uow, order)
        uow.commit()
    return jsonify(ORDER.dump(order))


def _record_order_change(uow, order: Order, **details) -> None:
    """An admin's change to `order`, recorded among the admin actions in `uow`'s transaction."""
    uow.admin_actions.record(requested_action(order.drop_id).ended(
        {"order_id": str(order.id), "status": order.status, **details}))


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
    errors=(401, 404, 422, 503),
    description="PAYMENT.CAPTURE.REFUNDED and PAYMENT.CAPTURE.REVERSED (money the provider gave back) name the "
                "capture they give back in resource.capture_id (resource.id is the refund's or the reversal's "
                "own): without it, 422.",
    headers={SIGNATURE_HEADER: {"description": "t=<unix seconds>,v1=<hex HMAC-SHA256 of '<t>.<body>'>; "
                                               "missing, wrong or stale answers 401"}},
)
def payment_webhook():
    settings = root().settings
    payload = request.get_data(cache=True)
    signature = request.headers.get(SIGNATURE_HEADER, "")
    if not any(signature_is_valid(secret, payload, signature, settings.webhook_tolerance_seconds)
               for secret in settings.payment_webhook_secrets):  # the previous one too, during a rotation
        raise InvalidSignature("The webhook signature is missing, wrong or outside the time tolerance.")
    event = load(WEBHOOK)
    resource = event["resource"]
    # a refund or a reversal is its own resource, and names the capture it gives back (the schema requires it)
    given_back = event["event_type"] in CAPTURE_UNDONE
    notice = handlers.PaymentNotice(
        event_id=event["id"],
        event_type=event["event_type"],
        order_id=resource["order_id"],
        capture_id=resource["capture_id"] if given_back else resource["id"],
        amount=resource["amount"],
        currency=resource["currency"],
        undone_by=resource["id"] if given_back else None,
    )
    outcome = handlers.take_payment(notice, unit_of_work, root().inventory, settings)
    return jsonify(WEBHOOK_ANSWER.dump({"result": outcome.result}))


# --- the waiting room (services/checkout/line.py) ------------------------------------------------

def _drop_id(raw: str):
    drop_id = uuid_or_none(raw)
    if drop_id is None:
        raise LineNotFound(f"There is no line for drop {raw}.")
    return drop_id


def _line(uow, raw: str):
    line = uow.lines.get(_drop_id(raw))
    if line is None:
        raise LineNotFound(f"There is no line for drop {raw}.")
    return line


@bp.put("/drops/<drop_id>/line")
@operation("Put a line (waiting room) on a drop, or change its settings (admin)", request=LineRequestSchema,
           response=LineSchema, errors=(404, 409), auth="admin",
           rules=("`opens_at` is between 2000-01-01 and 3000-01-01 UTC",),
           description="The line draws its secret seed and publishes the seed's SHA-256 (`commitment`) at once; "
                       "the seed is revealed at the opening. `refuse_new_accounts` refuses accounts created after "
                       "this call.")
@require_admin
def put_line(drop_id: str):
    body = load(LineRequestSchema())
    with unit_of_work() as uow:
        line = waiting_room.put_line(_drop_id(drop_id), waiting_room.LineSettings(**body), uow, utc_now())
        shown = _recorded_line_change(uow, line)
        uow.commit()
    current_app.extensions[LINE_VIEWS].forget(line.drop_id)
    return jsonify(shown)


@bp.patch("/drops/<drop_id>/line")
@operation("Pause, resume, close or reopen a line, or change its admission rate or factor (admin)",
           request=LineChangeSchema, response=LineSchema, errors=(404, 409, 503), auth="admin",
           description="The admitter closes a line itself once its drop's window has closed; `state: open` opens a "
                       "closed line again (one closed before its opening waits for it again, and cannot be paused: "
                       "`409 line-not-open-yet`), once the drop's window "
                       "is open again: `409 drop-closed` while it is closed (extend it at inventory first), `503` "
                       "when inventory cannot say. Recorded, in the same transaction, among the admin actions "
                       "(`GET /admin-actions`).")
@require_admin
def change_line(drop_id: str):
    body = load(LineChangeSchema())
    if body.get("state") in waiting_room.REOPENING:
        with unit_of_work() as uow:
            reopening = _line(uow, drop_id).state == waiting_room.CLOSED
        if reopening:  # asked with no transaction open, and only then: pausing needs no inventory
            body.update(drop_asked=True, drop_closes_at=root().inventory.drop_stock(drop_id).closes_at)
    with unit_of_work() as uow:
        line = waiting_room.change_line(_drop_id(drop_id), uow, utc_now(), **body)
        shown = _recorded_line_change(uow, line)
        uow.commit()
    current_app.extensions[LINE_VIEWS].forget(line.drop_id)
    return jsonify(shown)


def _recorded_line_change(uow, line) -> dict:
    """The line as answered, its change recorded among the admin actions in `uow`'s transaction."""
    shown = LINE.dump(line)
    uow.admin_actions.record(requested_action(line.drop_id).ended(
        {name: shown[name] for name in ("state", "admission_rate", "admission_factor")}))
    return shown


@bp.get("/drops/<drop_id>/line")
@operation("A drop's line: its state, commitment (and seed once open), counts and admission rate",
           response=LineSchema, errors=(404,),
           description="Every drop page reads it, so each worker answers it from a copy at most "
                       "`LINE_MAX_AGE_SECONDS` old (1 s), and says a CDN may keep it as long (`Cache-Control: "
                       "public, max-age`). Other services and tools read it afresh with the service key "
                       "(`X-Service-Key`).")
def show_line(drop_id: str):
    def render():
        with unit_of_work() as uow:
            line = _line(uow, drop_id)
        return LINE.dump(line), None  # the admitter changes a line, not the clock

    return public_answer(current_app.extensions[LINE_VIEWS], _drop_id(drop_id), render)


@bp.get("/drops/<drop_id>/line/order")
@operation("The pre-queue's tickets in admission order, with the revealed seed, for anyone to check",
           query=AdmissionOrderQuerySchema, response=AdmissionOrderSchema, errors=(404, 503))
def admission_order(drop_id: str):
    query = AdmissionOrderQuerySchema().load(request.args)
    with unit_of_work() as uow:
        line = _line(uow, drop_id)
        end = min(query["offset"] + query["limit"], line.pre_queue_size)
        if end > line.placed:  # a big pre-queue's positions are written over its first turns
            raise LineBeingPlaced(
                f"The pre-queue's positions are being written: {line.placed} of {line.pre_queue_size} so far. "
                f"Ask again in a few seconds, or for positions up to {line.placed} now.", retry_after=2)
        tickets = uow.lines.admission_order(line.drop_id, query["limit"], query["offset"]) if line.opened_at else []
    more = end < line.pre_queue_size
    return jsonify(AdmissionOrderSchema().dump({
        "drop_id": line.drop_id, "seed": line.seed.hex() if line.opened_at else None,
        "algorithm": waiting_room.ALGORITHM, "tickets": tickets,
        "next_offset": end if more else None,
    }))


@bp.get("/drops/<drop_id>/line/tickets/mine")
@operation("The buyer's place in the line: state, people ahead, estimated wait, the pass once admitted, and "
           "when to poll again", response=TicketSchema, errors=(404,), auth="bearer")
@require_user
def my_ticket(drop_id: str):
    with unit_of_work() as uow:
        found = uow.lines.ticket_and_line(_drop_id(drop_id), current_principal().subject)
    if found is None:
        raise TicketNotFound("You have no ticket in this drop's line (or it has no line); join it first.")
    return jsonify(TICKET.dump(waiting_room.ticket_view(found, found, utc_now(), root().settings.line_pass_secret)))


# --- the control room (services/checkout/control_room_page.py) ------------------------------------

@bp.get("/drops/<drop_id>/figures")
@operation("A drop's orders by status and placed a second (every pod's, from the database), and the answers "
           "to `POST /orders` by status (this pod's count)", response=DropFiguresSchema, errors=(404,), auth="admin",
           description="`answers` are what this pod's API processes counted since they started, for every drop "
                       "(`floodgate_http_requests_total`, read from their Prometheus directory): another pod "
                       "counts its own, and Prometheus has the sum. A drop without orders has zeros.")
@require_admin
def drop_figures(drop_id: str):
    drop = uuid_or_none(drop_id)
    if drop is None:
        raise DropNotFound(f"There is no drop {drop_id}.")
    with unit_of_work() as uow:
        orders = figures.drop_orders(uow, drop)
    return jsonify(DropFiguresSchema().dump({
        "drop_id": drop, "orders": orders,
        "answers": {"by_status": figures.order_answers(root().service), "counted_by": socket.gethostname()},
    }))
