"""HTTP entry points: load with a schema, run a handler in a unit of work, dump with a schema."""
from __future__ import annotations

from flask import Blueprint, current_app, request

from services.inventory import schemas
from services.inventory.errors import DropNotFound
from services.inventory.handlers import drops, reservations
from shared.answer_cache import AnswerCache
from shared.auth import require_admin, require_service
from shared.control_room import requested_action
from shared.openapi import operation
from shared.web import load, public_answer, root, unit_of_work

bp = Blueprint("inventory", __name__)
# Built once: instantiating a schema deep-copies its fields, which cost more than using it.
RESERVATION_REQUEST = schemas.ReservationRequestSchema()
RESERVATION = schemas.ReservationSchema()
SALE_REQUEST = schemas.SaleRequestSchema()
RESERVATION_BATCH_REQUEST = schemas.ReservationBatchRequestSchema()
HOLDERS_REQUEST = schemas.HoldersRequestSchema()
HOLDERS = schemas.HoldersSchema()
DROP = schemas.DropSchema()
DROP_VIEWS = "inventory.drop_views"


def init_app(app, settings) -> None:
    """The worker's copy of the drops' public answers (`GET /drops/{id}`)."""
    app.extensions[DROP_VIEWS] = AnswerCache(settings.drop_max_age_seconds)


@bp.post("/products")
@operation("Add a product", request=schemas.NewProductSchema, response=schemas.ProductSchema, status=201, errors=(409,), auth="admin")
@require_admin
def add_product():
    command = load(schemas.NewProductSchema())
    with unit_of_work() as uow:
        product = drops.add_product(command, uow)
        uow.commit()
    return schemas.ProductSchema().dump(product), 201


@bp.get("/products/<product_id>")
@operation("Show a product", response=schemas.ProductSchema, errors=(404,))
def show_product(product_id: str):
    with unit_of_work() as uow:
        return schemas.ProductSchema().dump(drops.show_product(product_id, uow))


@bp.post("/drops")
@operation("Schedule a drop", request=schemas.NewDropSchema, response=schemas.DropSchema, status=201, auth="admin",
           description="Recorded, in the same transaction, among the admin actions (`GET /admin-actions`).", rules=(
    "`product_id` names a product",
    "`closes_at` is after `opens_at` and in the future",
    "`invite_only_until` and `invite_tier` come together, and the invite-only phase ends after `opens_at`",
))
@require_admin
def schedule_drop():
    command = load(schemas.NewDropSchema())
    with unit_of_work() as uow:
        drop = drops.schedule_drop(command, uow, root().settings.default_stock_shards)
        shown = DROP.dump(drop)
        _record_drop_change(uow, drop.id, shown, ("opens_at", "closes_at", "state", "remaining"))
        uow.commit()
    return shown, 201


@bp.patch("/drops/<drop_id>")
@operation(
    "Move a drop's opening (before it opens) or close (extend, shorten or reopen), its invite-only phase's "
    "end, and/or add stock",
    request=schemas.ChangeDropSchema,
    response=schemas.DropSchema,
    errors=(404,),
    auth="admin",
    rules=("`opens_at` moves only before the drop opens, and not into the past",
           "`closes_at` is after the drop's `opens_at` (the new one, if moved) and in the future",
           "`invite_only_until` moves only while the phase lasts, to after the opening; an opening moved past "
           "the phase's end is refused unless it moves too",
           f"the drop holds at most {drops.MAX_TOTAL_STOCK} units over its life"),
    description="Recorded, in the same transaction, among the admin actions (`GET /admin-actions`).",
)
@require_admin
def change_drop(drop_id: str):
    command = load(schemas.ChangeDropSchema())
    with unit_of_work() as uow:
        drop = drops.change_drop(drop_id, command, uow)
        shown = DROP.dump(drop)
        _record_drop_change(uow, drop.id, shown, ("opens_at", "closes_at", "state", "remaining"))
        uow.commit()
    current_app.extensions[DROP_VIEWS].forget(drop.id)
    return shown


def _record_drop_change(uow, drop_id, shown: dict, fields: tuple[str, ...]) -> None:
    """Record the admin's request among the admin actions, in the unit of work's transaction,
    with `fields` of the drop as the answer shows it."""
    uow.admin_actions.record(requested_action(drop_id).ended({name: shown[name] for name in fields}))


@bp.get("/drops/<drop_id>")
@operation("Show a drop, its remaining stock and its state", response=schemas.DropSchema, errors=(404,),
           description="Every drop page reads it, so each worker answers it from a copy at most "
                       "`DROP_MAX_AGE_SECONDS` old (1 s), and never across the drop's opening or closing; the "
                       "answer says how long a CDN may keep it too (`Cache-Control: public, max-age`: 0 within a "
                       "second of the opening or closing). Other services and tools read it afresh with the service key "
                       "(`X-Service-Key`); a browser's `Cache-Control: no-cache` does not bypass the copy.")
def show_drop(drop_id: str):
    drop = drops.parse_id(drop_id, DropNotFound)

    def render():
        with unit_of_work() as uow:
            view = drops.show_drop(drop, uow)
        return DROP.dump(view), view.changes_in

    return public_answer(current_app.extensions[DROP_VIEWS], drop, render)


@bp.get("/drops/<drop_id>/stock")
@operation("A drop's units for the control room: total, remaining, held for orders awaiting payment, sold",
           response=schemas.DropStockSchema, errors=(404,), auth="admin")
@require_admin
def drop_stock(drop_id: str):
    with unit_of_work() as uow:
        return schemas.DropStockSchema().dump(drops.drop_stock(drop_id, uow))


@bp.post("/drops/<drop_id>/holders")
@operation("A drop's remaining units, and how many of the given buyers hold or bought a unit of it, at one moment",
           request=schemas.HoldersRequestSchema, response=schemas.HoldersSchema, errors=(403, 404), auth="service",
           description="What checkout's waiting-room admitter asks each turn, with the buyers whose admission passes "
                       "are unused: those who already hold a unit have an order in flight, and their pass is not "
                       "counted again against the units left.")
@require_service
def drop_holders(drop_id: str):
    request.max_content_length = schemas.HOLDERS_MAX_BODY_BYTES  # the service key is checked: up to 100,000 ids
    asked = load(HOLDERS_REQUEST)
    with unit_of_work() as uow:
        return HOLDERS.dump(drops.holders(drop_id, asked["buyer_ids"], uow))


@bp.post("/reservations")
@operation(
    "Hold stock for an order (idempotent by order_id; 201 new, 200 repeat)",
    request=schemas.ReservationRequestSchema,
    response=schemas.ReservationSchema,
    status=(201, 200),
    errors=(403, 404, 409),
    rules=("a drop that ships to a list of countries gets a `shipping_country` in it (`country-not-allowed`)",),
    auth="service",
)
@require_service
def reserve():
    command = load(RESERVATION_REQUEST)
    with unit_of_work() as uow:
        reservation, created = reservations.reserve(command, uow, root().settings.hold_ttl_seconds)
        uow.commit()
    return RESERVATION.dump(reservation), (201 if created else 200)


@bp.post("/reservations/batch")
@operation(
    "Hold stock for several orders in one call, each answered as `POST /reservations` would answer it",
    request=schemas.ReservationBatchRequestSchema,
    response=schemas.ReservationBatchSchema,
    errors=(403,),
    auth="service",
    description=(
        "What checkout sends when several of its orders need a hold at the same moment: one request, one "
        "transaction and one take from the drop's stock for all of them. Each result carries the status "
        "(201 new, 200 repeat, or a refusal's) and the reservation or problem document the single call "
        "would have answered; the batch itself answers 200."
    ),
)
@require_service
def reserve_batch():
    commands, request_ids = zip(*load(RESERVATION_BATCH_REQUEST)["holds"])
    with unit_of_work() as uow:
        outcomes = reservations.reserve_many(list(commands), uow, root().settings.hold_ttl_seconds, list(request_ids))
    return {"results": [_hold_result(cmd.order_id, outcome) for cmd, outcome in zip(commands, outcomes)]}


def _hold_result(order_id, outcome: reservations.HoldOutcome) -> dict:
    if outcome.refusal is not None:
        return {"order_id": str(order_id), "status": outcome.status, "problem": outcome.refusal.to_dict()}
    return {"order_id": str(order_id), "status": outcome.status, "reservation": RESERVATION.dump(outcome.reservation)}


@bp.post("/reservations/<order_id>/sell")
@operation("Turn a hold into a sale as its payment is confirmed (idempotent)", request=schemas.SaleRequestSchema,
           request_required=False, response=schemas.ReservationSchema, errors=(403, 404, 409), auth="service")
@require_service
def sell(order_id: str):
    # The body is optional: an older checkout sends none.
    order_version = load(SALE_REQUEST, allow_empty=True)["order_version"]
    with unit_of_work() as uow:
        reservation = reservations.sell(order_id, uow, order_version)
        uow.commit()
    return RESERVATION.dump(reservation)


@bp.post("/reservations/<order_id>/release")
@operation("Release a held reservation (idempotent)", response=schemas.ReservationSchema, errors=(404, 409), auth="service")
@require_service
def release(order_id: str):
    with unit_of_work() as uow:
        reservation = reservations.release(order_id, uow)
        uow.commit()
    return RESERVATION.dump(reservation)
