"""The control room admins open on drop day: `GET /drops/{drop_id}/control-room`.

One HTML page, no build step, made like the drop page (page.py): its inline script signs the
admin in at accounts and then, every two seconds, asks each service's admin API for one drop's
figures: inventory's stock (`GET /drops/{id}/stock`), checkout's orders and answers
(`GET /drops/{id}/figures`) and line (`GET /drops/{id}/line`), notifications' email backlog and
dead letters (`GET /figures`), every service's workers (`GET /workers`) and admin actions
(`GET /admin-actions`). Its buttons call the same admin endpoints a script would
(`PATCH /drops/{id}`, `PATCH /drops/{id}/line`, `POST /dead-letters/replay`), and each service
records them. Everything shown is written as text, never as markup.

Left out of checkout's OpenAPI document, as the drop page is: it is `text/html`.
"""
from __future__ import annotations

from flask import Blueprint

from services.checkout.page import drop_id_in_path, page_response, service_urls
from shared.web import root

bp = Blueprint("control_room", __name__, template_folder="templates")


@bp.get("/drops/<drop_id>/control-room")
def control_room(drop_id: str):
    drop_id = drop_id_in_path(drop_id, "A drop's control room is at /drops/<its id>/control-room; that is not a drop id.")
    settings = root().settings
    return page_response("control_room.html", drop_id,
                         service_urls(settings, notifications=settings.notifications_public_url))
