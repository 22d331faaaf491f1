"""The drop page buyers open: `GET /drops/{drop_id}/page`.

One HTML page, no build step: its inline script signs the buyer up or in at accounts, shows the
drop from inventory with a countdown, takes a place in the drop's line, places the order here and
follows it to its confirmation email, calling each service from the browser (they answer it
through CORS). The server only fills in where the services are and what time it is; everything
the buyer sees comes from the APIs, written into the page as text, never as markup.

Left out of checkout's OpenAPI document: `shared.openapi.operation` describes JSON answers only,
and this one is `text/html`.
"""
from __future__ import annotations

import secrets
import uuid
from datetime import datetime, timezone
from urllib.parse import urlsplit

from flask import Blueprint, make_response, render_template

from shared.errors import DropNotFound
from shared.web import root

bp = Blueprint("drop_page", __name__, template_folder="templates")


@bp.get("/drops/<drop_id>/page")
def drop_page(drop_id: str):
    try:
        drop_id = str(uuid.UUID(drop_id))
    except ValueError:
        raise DropNotFound("A drop's page is at /drops/<its id>/page; that is not a drop id.") from None
    settings = root().settings
    services = {
        "accounts": settings.accounts_public_url.rstrip("/"),
        "inventory": settings.inventory_public_url.rstrip("/"),
        "checkout": settings.public_url.rstrip("/"),
        "line": settings.line_status_public_url.rstrip("/"),  # the waiting room's status edge
    }
    nonce = secrets.token_urlsafe(16)
    page = {
        "drop_id": drop_id,
        "services": services,
        # the buyer's clock may be off; the countdown runs on the server's
        "server_time": datetime.now(timezone.utc).isoformat(),
    }
    response = make_response(render_template("drop_page.html", page=page, nonce=nonce))
    response.headers["Content-Security-Policy"] = content_security_policy(nonce, services.values())
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def content_security_policy(nonce: str, service_urls) -> str:
    """Only the page's own script and style run, and it talks to the services alone."""
    origins = sorted({_origin(url) for url in service_urls})
    return "; ".join((
        "default-src 'none'",
        f"script-src 'nonce-{nonce}'",
        f"style-src 'nonce-{nonce}'",
        f"connect-src {' '.join(origins)}",
        "img-src 'self' data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ))


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
