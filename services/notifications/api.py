"""Notifications' admin API: the delivery log and the dead letters."""
from flask import Blueprint, jsonify, request

from shared import web
from shared.auth import require_admin
from shared.control_room import requested_action
from shared.openapi import operation
from services.notifications import figures, handlers
from services.notifications.schemas import (
    DeadLetterQuerySchema,
    DeadLetterSchema,
    DeliveryQuerySchema,
    DeliverySchema,
    FiguresSchema,
    ReplayRequestSchema,
    ReplayResultSchema,
)

bp = Blueprint("notifications", __name__)


@bp.get("/notifications")
@operation(
    "Deliveries (sent, retrying or dead), newest first; filter with ?order_id=, ?to=, ?status=, ?limit= (1-500, default 50)",
    query=DeliveryQuerySchema,
    response=DeliverySchema(many=True),
    auth="admin",
)
@require_admin
def list_deliveries():
    query = web.load(DeliveryQuerySchema(), request.args.to_dict())
    with web.unit_of_work() as uow:
        return jsonify(DeliverySchema(many=True).dump(handlers.find_deliveries(query, uow)))


@bp.get("/dead-letters")
@operation("Events parked after their last attempt, of every service (or ?service=checkout, ...)",
           query=DeadLetterQuerySchema, response=DeadLetterSchema(many=True), auth="admin", errors=(503,))
@require_admin
def list_dead_letters():
    query = DeadLetterQuerySchema().load(request.args)
    letters = handlers.dead_letters(web.root().settings, query["service"])
    return jsonify(DeadLetterSchema(many=True).dump(letters))


@bp.post("/dead-letters/replay")
@operation(
    "Send one parked event (by message_id) or all of them, of one service (default notifications), "
    "back to be handled again",
    request=ReplayRequestSchema,
    request_required=False,
    response=ReplayResultSchema,
    auth="admin",
    errors=(503,),
    description="An empty body replays every parked event of notifications, as `{}` does. Recorded among the "
                "admin actions (`GET /admin-actions`) with how many went back. 503 `broker-unavailable` or "
                "`database-unavailable`: nothing went back; 503 `replay-not-recorded`: `replayed` events went "
                "back but the database was away as the replay was to be recorded (do not replay them again).",
)
@require_admin
def replay_dead_letters():
    args = web.load(ReplayRequestSchema(), allow_empty=True)
    replayed = handlers.replay(args["message_id"], web.root().settings, web.unit_of_work(), args["service"],
                               action=requested_action())
    return jsonify(ReplayResultSchema().dump({"replayed": replayed}))


@bp.get("/figures")
@operation(
    "For the control room: the email backlog, the age of the oldest unsent email, when the last one went out, "
    "and the dead letters of every service",
    response=FiguresSchema,
    auth="admin",
    description="The email figures are those /metrics reports (`floodgate_notifications_*`), read by the same "
                "collector; one whose source (the delivery log, the broker) could not be read is null, and "
                "`email.sources` says which. `dead_letters` counts each consuming service's dead-letter queue "
                "(null when the broker does not answer); `GET /dead-letters` lists them.",
)
@require_admin
def control_room_figures():
    root = web.root()
    timeout = root.settings.metrics_query_timeout_seconds
    return jsonify(FiguresSchema().dump({
        "email": figures.email_figures(root.email_metrics(), root.service),
        "dead_letters": figures.dead_letters(root.settings, timeout),
    }))
