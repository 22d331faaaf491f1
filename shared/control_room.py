"""What every service gives the control room (services/checkout/control_room_page.py), as admin JSON.

- `GET /workers` (every service): its relays', consumers', sweeper's and admitter's heartbeats.
- `GET /admin-actions` (inventory, checkout, notifications): what admins did there
  (shared/admin_actions.py).

The figures are those /metrics serves, read by the same sources (`shared.last_seen`'s for the
heartbeats) and turned into plain values (`samples`): the page and Prometheus cannot disagree,
and there is no second query to drift from the first.
"""
from __future__ import annotations

import json
from typing import Iterable

from flask import Blueprint, jsonify, request
from marshmallow import Schema, fields, validate
from prometheus_client.core import Metric

from shared import logs
from shared.admin_actions import AdminAction
from shared.auth import current_principal, require_admin
from shared.last_seen import ALIVE_WITHIN_SECONDS, heartbeat_figures
from shared.openapi import operation
from shared.web import load, root, unit_of_work, unstorable_text

Labels = tuple[tuple[str, str], ...]


def samples(families: Iterable[Metric]) -> dict[tuple[str, Labels], float]:
    """The samples of `families` (what a /metrics source yields) as {(sample name, labels sorted):
    value}; a counter's sample is named with its `_total`."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in families for sample in family.samples}


def requested_action(drop_id=None) -> AdminAction:
    """The action the current request asks for, by its admin: the method, the path and the JSON
    body as sent (`{}` for none), and the drop it concerns, if one."""
    principal = current_principal()
    try:
        body = request.get_json(silent=True) if request.get_data(cache=True) else None
    except RecursionError:  # nested too deeply to be anything an admin sent (see shared.web.load)
        body = None
    return AdminAction(
        admin_subject=principal.subject,
        admin_email=principal.email,
        method=request.method,
        path=request.path,
        drop_id=drop_id,
        body=_recordable(body),
        request_id=logs.current_request_id(),
    )


def _recordable(body) -> dict:
    """The body as the admin-action log (JSONB) can keep it: `{}` for none or one that is not an
    object, and a note instead of one PostgreSQL refuses (NUL, lone surrogates, NaN or infinite
    numbers), which the action itself may well have ignored (ship and cancel take no body)."""
    if not isinstance(body, dict):
        return {}
    try:
        json.dumps(body, allow_nan=False)
    except ValueError:
        return {"unrecorded": "a number JSON cannot carry"}
    if unstorable_text(body) is not None:
        return {"unrecorded": "text that is not valid UTF-8, or a NUL character"}
    return body


# --- GET /workers ---------------------------------------------------------------------------------

_HEARTBEAT_SAMPLES = ("floodgate_worker_heartbeat_age_seconds", "floodgate_worker_processes_alive")


def workers(families: Iterable[Metric]) -> list[dict]:
    """Per kind of worker, from a heartbeat source's families (`shared.last_seen.heartbeat_figures`):
    seconds since any of its processes last turned its loop and did its work, and how many did
    within the last `ALIVE_WITHIN_SECONDS`. A kind that never ran has no row, and so is not listed."""
    found: dict[str, dict] = {}
    for (name, labels), value in samples(families).items():
        kind = dict(labels).get("kind")
        if kind is None or name not in _HEARTBEAT_SAMPLES:
            continue
        row = found.setdefault(kind, {"kind": kind, "last_beat_seconds_ago": None, "alive": 0})
        if name == "floodgate_worker_processes_alive":
            row["alive"] = int(value)
        else:
            row["last_beat_seconds_ago"] = value
    return [found[kind] for kind in sorted(found)]


class WorkerSchema(Schema):
    kind = fields.String(metadata={"description": "relay, consumer, sweeper or admitter"})
    last_beat_seconds_ago = fields.Float(allow_none=True, metadata={
        "description": "seconds since any process of this kind last turned its loop and did its work"})
    alive = fields.Integer(metadata={"description": "its processes that turned within `alive_within_seconds`"})


class WorkersSchema(Schema):
    service = fields.String()
    alive_within_seconds = fields.Float()
    workers = fields.List(fields.Nested(WorkerSchema))


workers_bp = Blueprint("workers", __name__)


@workers_bp.get("/workers")
@operation("This service's workers (relays, consumers, sweeper, admitter): how long since each kind last "
           "turned its loop, and how many of its processes are running", response=WorkersSchema, auth="admin",
           description="The heartbeats the workers write to the service's database (shared/last_seen.py), as "
                       "/metrics reports them (`floodgate_worker_heartbeat_age_seconds`, "
                       "`floodgate_worker_processes_alive`). A kind that never ran is not listed.")
@require_admin
def list_workers():
    service = root()
    read = heartbeat_figures(service.service, service.engine, service.settings.metrics_query_timeout_seconds)
    return jsonify(WorkersSchema().dump({
        "service": service.service, "alive_within_seconds": ALIVE_WITHIN_SECONDS, "workers": workers(read()),
    }))


# --- GET /admin-actions ---------------------------------------------------------------------------

class AdminActionQuerySchema(Schema):
    drop_id = fields.UUID(load_default=None, metadata={
        "description": "only the actions on this drop, and those on no drop in particular (replays)"})
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))


class AdminSchema(Schema):
    subject = fields.String()
    email = fields.String(allow_none=True)


class AdminActionSchema(Schema):
    id = fields.Integer()
    service = fields.String()
    at = fields.DateTime()
    admin = fields.Nested(AdminSchema, metadata={"description": "who: the access token's subject and email"})
    method = fields.String()
    path = fields.String()
    drop_id = fields.UUID(allow_none=True)
    body = fields.Dict(metadata={"description": "the JSON body as the admin sent it"})
    outcome = fields.Dict(allow_none=True, metadata={"description": "what the action did"})
    request_id = fields.String(allow_none=True)


admin_actions_bp = Blueprint("admin_actions", __name__)


@admin_actions_bp.get("/admin-actions")
@operation("What admins did here, newest first: who, when, what (method, path, drop, body) and its outcome",
           query=AdminActionQuerySchema, response=AdminActionSchema(many=True), auth="admin",
           description="Recorded in the transaction of the change where the action has one (a drop's close, a "
                       "line's state), right after it otherwise (a replay of dead letters). Refused actions "
                       "are not recorded.")
@require_admin
def list_admin_actions():
    query = load(AdminActionQuerySchema(), request.args.to_dict())
    with unit_of_work() as uow:
        actions = uow.admin_actions.recent(query["drop_id"], query["limit"])
    service = root().service
    return jsonify(AdminActionSchema(many=True).dump([
        {**vars(action), "service": service, "admin": {"subject": action.admin_subject, "email": action.admin_email}}
        for action in actions
    ]))
